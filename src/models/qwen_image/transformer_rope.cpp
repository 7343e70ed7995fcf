#include "models/qwen_image/transformer_rope.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "runtime/error.h"
#include "runtime/parallel.h"

namespace ethereal {

namespace {

constexpr double kRopeTheta = 10000.0;

void check_grids(const std::vector<PatchGrid>& img_shapes) {
  if (img_shapes.empty()) {
    throw InvalidInputError(
        "transformer RoPE: img_shapes is empty; it needs the target grid, then one grid per "
        "reference image");
  }
  for (std::size_t i = 0; i < img_shapes.size(); ++i) {
    const PatchGrid& grid = img_shapes[i];
    if (grid.frames <= 0 || grid.height <= 0 || grid.width <= 0) {
      throw InvalidInputError(fmt::format(
          "transformer RoPE: img_shapes[{}] = ({}, {}, {}) must have positive frames, height "
          "and width (in patches)",
          i, grid.frames, grid.height, grid.width));
    }
  }
}

// First centred position of an extent: -(n - n/2).
std::int64_t centred_start(std::int64_t extent) {
  return -(extent - extent / 2);
}

// Rotation frequencies of all D/2 pairs, [frame | height | width], each computed as PyTorch
// does in f32: 1 / 10000^(f32(2j) / dim).
std::vector<float> pair_frequencies(const QwenImageTransformerConfig& config) {
  std::vector<float> frequencies;
  for (std::int64_t dim : config.axes_dims_rope) {
    for (std::int64_t j = 0; j < dim / 2; ++j) {
      const float exponent = static_cast<float>(2 * j) / static_cast<float>(dim);
      const float power = static_cast<float>(std::pow(kRopeTheta, static_cast<double>(exponent)));
      frequencies.push_back(1.0f / power);
    }
  }
  return frequencies;
}

// Axis of each pair: 0 (frame), 1 (height) or 2 (width).
std::vector<int> pair_axes(const QwenImageTransformerConfig& config) {
  std::vector<int> axes;
  for (int axis = 0; axis < 3; ++axis) {
    axes.insert(axes.end(), static_cast<std::size_t>(config.axes_dims_rope[axis] / 2), axis);
  }
  return axes;
}

// Fills row `row` of the tables with the rotations of `position`.
void fill_row(const RopePosition& position, const std::vector<float>& frequencies,
              const std::vector<int>& axes, float* cos_row, float* sin_row) {
  for (std::size_t pair = 0; pair < frequencies.size(); ++pair) {
    const float angle = static_cast<float>(position[axes[pair]]) * frequencies[pair];
    cos_row[pair] = static_cast<float>(std::cos(static_cast<double>(angle)));
    sin_row[pair] = static_cast<float>(std::sin(static_cast<double>(angle)));
  }
}

// Allocates [positions.size(), D/2] tables and fills them unless they are dry.
void build_tables(const std::vector<RopePosition>& positions,
                  const QwenImageTransformerConfig& config, Tensor& cos, Tensor& sin) {
  const std::int64_t half = config.attention_head_dim / 2;
  const auto count = static_cast<std::int64_t>(positions.size());
  cos = Tensor::empty({count, half}, DType::f32);
  sin = Tensor::empty({count, half}, DType::f32);
  if (cos.is_dry() || sin.is_dry() || count == 0) {
    return;
  }
  const std::vector<float> frequencies = pair_frequencies(config);
  const std::vector<int> axes = pair_axes(config);
  float* cos_data = cos.data_as<float>();
  float* sin_data = sin.data_as<float>();
  parallel_for(0, count, 256, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t row = begin; row < end; ++row) {
      fill_row(positions[static_cast<std::size_t>(row)], frequencies, axes, cos_data + row * half,
               sin_data + row * half);
    }
  });
}

}  // namespace

std::vector<RopePosition> image_rope_positions(const std::vector<PatchGrid>& img_shapes) {
  check_grids(img_shapes);
  std::vector<RopePosition> positions;
  for (std::size_t index = 0; index < img_shapes.size(); ++index) {
    const PatchGrid& grid = img_shapes[index];
    const std::int64_t row_start = centred_start(grid.height);
    const std::int64_t column_start = centred_start(grid.width);
    for (std::int64_t frame = 0; frame < grid.frames; ++frame) {
      for (std::int64_t row = 0; row < grid.height; ++row) {
        for (std::int64_t column = 0; column < grid.width; ++column) {
          positions.push_back(
              {static_cast<std::int64_t>(index) + frame, row_start + row, column_start + column});
        }
      }
    }
  }
  return positions;
}

std::int64_t text_rope_start(const std::vector<PatchGrid>& img_shapes) {
  check_grids(img_shapes);
  std::int64_t start = 0;
  for (const PatchGrid& grid : img_shapes) {
    start = std::max({start, grid.height / 2, grid.width / 2});
  }
  return start;
}

RopeTables rope_tables(const std::vector<PatchGrid>& img_shapes, std::int64_t text_length,
                       const QwenImageTransformerConfig& config) {
  if (text_length < 0) {
    throw InvalidInputError(
        fmt::format("transformer RoPE: text length {} must not be negative", text_length));
  }
  const std::vector<RopePosition> image_positions = image_rope_positions(img_shapes);
  const std::int64_t start = text_rope_start(img_shapes);
  std::vector<RopePosition> text_positions;
  text_positions.reserve(static_cast<std::size_t>(text_length));
  for (std::int64_t j = 0; j < text_length; ++j) {
    text_positions.push_back({start + j, start + j, start + j});
  }

  RopeTables tables;
  build_tables(image_positions, config, tables.image_cos, tables.image_sin);
  build_tables(text_positions, config, tables.text_cos, tables.text_sin);
  return tables;
}

}  // namespace ethereal
