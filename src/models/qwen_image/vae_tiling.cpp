#include "models/qwen_image/vae_tiling.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "kernels/cpu/kernel_support.h"
#include "models/qwen_image/vae_tensor_ops.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace ethereal {

namespace {

using cpu::simd::from_f32;
using cpu::simd::to_f32;

void validate_tiling(const VaeTiling& tiling, std::int64_t spatial_factor) {
  if (tiling.tile_px <= 0 || tiling.tile_px % spatial_factor != 0) {
    throw InvalidInputError(fmt::format(
        "VAE tiling: tile size {} px is invalid; use a positive multiple of {} (default 256)",
        tiling.tile_px, spatial_factor));
  }
  if (tiling.overlap_px < 0 || tiling.overlap_px >= tiling.tile_px ||
      tiling.overlap_px % spatial_factor != 0) {
    throw InvalidInputError(fmt::format(
        "VAE tiling: overlap {} px is invalid for {} px tiles; use a multiple of {} from 0 up "
        "to below the tile size (default 64)",
        tiling.overlap_px, tiling.tile_px, spatial_factor));
  }
}

// Linear ramp of diffusers' blend_v / blend_h: the first `extent` rows (vertical) or columns
// of `b` fade from the last ones of `a` into `b`'s own values.
void blend(const Tensor& a, Tensor& b, std::int64_t blend_extent, bool vertical) {
  const std::int64_t axis = vertical ? 2 : 3;
  const std::int64_t extent = std::min({blend_extent, a.size(axis), b.size(axis)});
  if (extent <= 0 || cpu::support::skip_compute(a, b)) {
    return;
  }
  const std::int64_t channels = b.size(1);
  const std::int64_t a_height = a.size(2);
  const std::int64_t a_width = a.size(3);
  const std::int64_t b_height = b.size(2);
  const std::int64_t b_width = b.size(3);
  cpu::support::dispatch_float(b.dtype(), [&](auto element) {
    using T = decltype(element);
    const T* in = a.data_as<T>();
    T* out = b.data_as<T>();
    // Rows of b that change: the first `extent` of each channel (vertical) or all of them.
    const std::int64_t rows_per_channel = vertical ? extent : b_height;
    parallel_for(0, channels * rows_per_channel, 16, [&](std::int64_t first, std::int64_t last) {
      for (std::int64_t row = first; row < last; ++row) {
        const std::int64_t c = row / rows_per_channel;
        const std::int64_t y = row % rows_per_channel;
        T* b_row = out + (c * b_height + y) * b_width;
        if (vertical) {
          const T* a_row = in + (c * a_height + a_height - extent + y) * a_width;
          const float t = static_cast<float>(y) / static_cast<float>(extent);
          for (std::int64_t x = 0; x < b_width; ++x) {
            b_row[x] = from_f32<T>(to_f32(a_row[x]) * (1.0f - t) + to_f32(b_row[x]) * t);
          }
        } else {
          const T* a_row = in + (c * a_height + y) * a_width + a_width - extent;
          for (std::int64_t x = 0; x < extent; ++x) {
            const float t = static_cast<float>(x) / static_cast<float>(extent);
            b_row[x] = from_f32<T>(to_f32(a_row[x]) * (1.0f - t) + to_f32(b_row[x]) * t);
          }
        }
      }
    });
  });
}

// Copies tile[:, :, :height, :width] into output[:, :, top:top+height, left:left+width].
void paste(const Tensor& tile, Tensor& output, std::int64_t top, std::int64_t left,
           std::int64_t height, std::int64_t width) {
  if (top + height > output.size(2) || left + width > output.size(3)) {
    throw Error(fmt::format("run_tiled: a {}x{} tile at ({}, {}) does not fit into {}", height,
                            width, top, left, output.describe()));
  }
  if (cpu::support::skip_compute(tile, output)) {
    return;
  }
  const std::size_t element = dtype_bytes(tile.dtype(), 1);
  const std::int64_t channels = tile.size(1);
  const std::int64_t tile_height = tile.size(2);
  const std::int64_t tile_width = tile.size(3);
  const std::int64_t out_height = output.size(2);
  const std::int64_t out_width = output.size(3);
  const char* in = static_cast<const char*>(tile.data());
  char* out = static_cast<char*>(output.data());
  parallel_for(0, channels * height, 64, [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t row = first; row < last; ++row) {
      const std::int64_t c = row / height;
      const std::int64_t y = row % height;
      const std::int64_t source = (c * tile_height + y) * tile_width;
      const std::int64_t target = (c * out_height + top + y) * out_width + left;
      std::memcpy(out + static_cast<std::size_t>(target) * element,
                  in + static_cast<std::size_t>(source) * element,
                  static_cast<std::size_t>(width) * element);
    }
  });
}

std::int64_t scale_extent(const TileGrid& grid, std::int64_t input_extent) {
  return input_extent * grid.output_numerator / grid.output_denominator;
}

}  // namespace

TileGrid TileGrid::for_encode(const VaeTiling& tiling, std::int64_t spatial_factor) {
  validate_tiling(tiling, spatial_factor);
  const std::int64_t stride = tiling.tile_px - tiling.overlap_px;
  return {.input_tile = tiling.tile_px,
          .input_stride = stride,
          .output_stride = stride / spatial_factor,
          .output_blend = tiling.overlap_px / spatial_factor,
          .output_numerator = 1,
          .output_denominator = spatial_factor};
}

TileGrid TileGrid::for_decode(const VaeTiling& tiling, std::int64_t spatial_factor) {
  validate_tiling(tiling, spatial_factor);
  const std::int64_t stride = tiling.tile_px - tiling.overlap_px;
  return {.input_tile = tiling.tile_px / spatial_factor,
          .input_stride = stride / spatial_factor,
          .output_stride = stride,
          .output_blend = tiling.overlap_px,
          .output_numerator = spatial_factor,
          .output_denominator = 1};
}

Tensor run_tiled(const Tensor& x, const TileGrid& grid,
                 const std::function<Tensor(const Tensor& tile)>& run_tile) {
  const std::int64_t height = x.size(2);
  const std::int64_t width = x.size(3);
  for (std::int64_t extent : {height, width}) {
    if (extent * grid.output_numerator % grid.output_denominator != 0) {
      throw Error(fmt::format("run_tiled: input {} does not divide by the tile grid's factor {}",
                              x.describe(), grid.output_denominator));
    }
  }
  Tensor output;
  std::vector<Tensor> previous_row;
  std::vector<Tensor> current_row;
  for (std::int64_t top = 0, row = 0; top < height; top += grid.input_stride, ++row) {
    current_row.clear();
    for (std::int64_t left = 0, column = 0; left < width; left += grid.input_stride, ++column) {
      const std::int64_t tile_height = std::min(grid.input_tile, height - top);
      const std::int64_t tile_width = std::min(grid.input_tile, width - left);
      Tensor result = run_tile(vae_ops::crop(x, top, left, tile_height, tile_width));
      const Shape expected = {1, result.size(1), scale_extent(grid, tile_height),
                              scale_extent(grid, tile_width)};
      if (result.shape() != expected || !result.is_contiguous()) {
        throw Error(fmt::format("run_tiled: a tile returned {}, expected contiguous {}",
                                result.describe(), shape_str(expected)));
      }
      if (!output.defined()) {
        output = Tensor::empty(
            {1, result.size(1), scale_extent(grid, height), scale_extent(grid, width)},
            result.dtype());
      }
      if (row > 0) {
        blend(previous_row[static_cast<std::size_t>(column)], result, grid.output_blend, true);
        previous_row[static_cast<std::size_t>(column)] = Tensor();  // no longer needed
      }
      if (column > 0) {
        blend(current_row.back(), result, grid.output_blend, false);
      }
      paste(result, output, row * grid.output_stride, column * grid.output_stride,
            std::min(grid.output_stride, result.size(2)),
            std::min(grid.output_stride, result.size(3)));
      current_row.push_back(std::move(result));
    }
    previous_row = std::move(current_row);
  }
  return output;
}

}  // namespace ethereal
