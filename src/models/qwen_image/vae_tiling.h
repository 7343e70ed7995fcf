// Tiled VAE encode and decode, with the tile grid and linear blending of diffusers'
// AutoencoderKLQwenImage.tiled_encode / tiled_decode.
//
// Tiles of tile_px pixels start every stride = tile_px - overlap_px pixels (diffusers
// defaults: 256 and 192); the last tiles of a row or column are cut at the image border. Each
// tile runs through the network alone, so the working memory is that of one tile. Tiles are
// then visited row by row: a tile is blended with the (already blended) tile above over its
// first rows and with the one to its left over its first columns,
//   b[y] = a[len_a - e + y] * (1 - y / e) + b[y] * (y / e),   y = 0 ... e - 1,
// e = min(blend extent, len_a, len_b), and its first stride x stride values go to the output.
// Encode blends in latent space (extent overlap_px / 8 latents), decode in pixel space
// (extent overlap_px pixels).
//
// Tiling changes the result, because a tile's receptive field (and the mid block's global
// attention) covers only that tile. Blending hides the seams. A grid of one tile equals the
// untiled computation.
#pragma once

#include <cstdint>
#include <functional>

#include "runtime/tensor.h"

namespace ethereal {

struct VaeTiling {
  // Run encode and decode tile by tile. Nothing turns this on automatically: choosing it (for
  // example when the image is larger than one tile) is the memory manager's decision.
  bool enabled = false;
  // Tile edge in image pixels; a multiple of the VAE's spatial factor (8).
  int tile_px = 256;
  // Pixels shared by neighbouring tiles; a multiple of 8 below tile_px. 0 disables blending.
  int overlap_px = 64;
};

// The tile grid in one direction of the network, in the units of its input and output.
struct TileGrid {
  std::int64_t input_tile = 0;     // tile edge, input units
  std::int64_t input_stride = 0;   // distance between tile starts, input units
  std::int64_t output_stride = 0;  // values each tile contributes per axis, output units
  std::int64_t output_blend = 0;   // blend extent, output units
  // Output extent for an input extent: input * numerator / denominator.
  std::int64_t output_numerator = 1;
  std::int64_t output_denominator = 1;

  // Encode: pixels in, latents out. Decode: latents in, pixels out. Throws InvalidInputError
  // naming the tiling values when they are not multiples of `spatial_factor` or the overlap is
  // not below the tile size.
  static TileGrid for_encode(const VaeTiling& tiling, std::int64_t spatial_factor);
  static TileGrid for_decode(const VaeTiling& tiling, std::int64_t spatial_factor);
};

// Runs `run_tile` on every tile of x [1, C, H, W] and blends the results into one
// [1, C', H * num / den, W * num / den] tensor. `run_tile` receives a contiguous
// [1, C, h, w] window and must return [1, C', h * num / den, w * num / den] in one dtype for
// all tiles. Only the tiles of the current and the previous grid row are kept.
Tensor run_tiled(const Tensor& x, const TileGrid& grid,
                 const std::function<Tensor(const Tensor& tile)>& run_tile);

}  // namespace ethereal
