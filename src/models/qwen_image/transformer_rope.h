// Rotary position tables of the Qwen-Image transformer (diffusers QwenEmbedRope with
// scale_rope = true).
//
// Every token has a 3-axis position (frame, row, column). The head's D/2 rotated channel pairs
// are split into [frame | height | width] groups of axes_dims_rope[a] / 2 pairs each; pair j of
// axis a rotates by pos_a * w_(a,j) with w_(a,j) = 10000^(-2j / axes_dims_rope[a]). The
// transformer applies them to adjacent channel pairs (x[2k], x[2k+1]).
//
// Positions:
//   - image i of img_shapes (0 = the noisy target, 1, 2, ... = references) has frame position
//     i + f for its frame f, so the frame axis separates the target and each reference;
//   - rows and columns are centred: an extent n gets -(n - n/2) ... n/2 - 1 (integer division),
//     so an odd extent puts its extra position on the negative side (n = 3: -2, -1, 0);
//   - text token j has position start + j on all three axes, with start the maximum over all
//     images of max(h/2, w/2).
// diffusers precomputes positions -4096 ... 4095 only; these tables are computed directly, so
// larger grids work here, though the model never saw such positions in training.
//
// Precision: angles are formed in f32 as f32(pos) * f32(w), with w computed as PyTorch does in
// f32: 1 / 10000^(f32(2j) / dim). Their cos and sin are rounded to f32.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "models/qwen_image/transformer_config.h"
#include "runtime/tensor.h"

namespace ethereal {

// The token grid of one image in patches: frames x height x width tokens, row-major.
struct PatchGrid {
  std::int64_t frames = 1;
  std::int64_t height = 0;
  std::int64_t width = 0;

  std::int64_t tokens() const { return frames * height * width; }
  bool operator==(const PatchGrid&) const = default;
};

// The (frame, row, column) position of one token.
using RopePosition = std::array<std::int64_t, 3>;

// Positions of every image token: images in list order, tokens row-major inside each.
std::vector<RopePosition> image_rope_positions(const std::vector<PatchGrid>& img_shapes);
// Position of the first text token: max over all images of max(height / 2, width / 2).
std::int64_t text_rope_start(const std::vector<PatchGrid>& img_shapes);

// f32 cos and sin tables [tokens, head_dim / 2], in the layout cpu::apply_rope_ reads.
struct RopeTables {
  Tensor image_cos;  // [S_img, head_dim / 2]
  Tensor image_sin;
  Tensor text_cos;  // [S_txt, head_dim / 2]
  Tensor text_sin;
};

// Builds the tables for the image tokens of `img_shapes` and `text_length` text tokens. The
// four tensors come from the current allocator; in a dry run they are only allocated.
// Throws InvalidInputError for an empty img_shapes or a grid with a non-positive extent.
RopeTables rope_tables(const std::vector<PatchGrid>& img_shapes, std::int64_t text_length,
                       const QwenImageTransformerConfig& config);

}  // namespace ethereal
