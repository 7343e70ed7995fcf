#include "models/qwen2_5_vl/positions.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include <fmt/format.h>

#include "runtime/error.h"

namespace ethereal {

namespace {

std::string grid_str(const ImageGrid& grid) {
  return fmt::format("({}, {}, {})", grid.t, grid.h, grid.w);
}

void check_grid(const ImageGrid& grid, std::size_t index, std::int64_t merge) {
  if (grid.t <= 0 || grid.h <= 0 || grid.w <= 0 || grid.h % merge != 0 || grid.w % merge != 0) {
    throw InvalidInputError(fmt::format(
        "image grid {} is {}; the frame, row and column counts must be positive and the rows "
        "and columns multiples of the spatial merge size {}",
        index, grid_str(grid), merge));
  }
}

// Index of the first `token` in ids[from, end), or ids.size().
std::size_t find_token(std::span<const std::int64_t> ids, std::size_t from, std::int64_t token) {
  const auto it = std::find(ids.begin() + static_cast<std::ptrdiff_t>(from), ids.end(), token);
  return static_cast<std::size_t>(it - ids.begin());
}

// Checks that the image span starting at `start` is a vision-start token followed by exactly
// `count` image tokens.
void check_image_span(std::span<const std::int64_t> ids, std::size_t start, std::int64_t count,
                      std::size_t image, const ImageGrid& grid, const Qwen25VlConfig& config) {
  if (start == 0 || ids[start - 1] != config.vision_start_token_id) {
    throw InvalidInputError(fmt::format(
        "image {}: its image tokens at position {} do not follow a vision-start token (id {}); "
        "the prompt must hold <|vision_start|><|image_pad|>...<|vision_end|> per image",
        image, start, config.vision_start_token_id));
  }
  std::size_t end = start;
  while (end < ids.size() && ids[end] == config.image_token_id) {
    ++end;
  }
  if (static_cast<std::int64_t>(end - start) != count) {
    throw InvalidInputError(fmt::format(
        "image {}: the prompt has {} image tokens (id {}) at position {}, but its grid {} "
        "needs {}; expand each image placeholder to the merged token count of its image",
        image, end - start, config.image_token_id, start, grid_str(grid), count));
  }
}

// Numbers the text tokens [from, to) with t = h = w = next, next + 1, ...
void write_text_positions(std::int64_t* rows, std::size_t length, std::size_t from, std::size_t to,
                          std::int64_t& next) {
  for (std::size_t i = from; i < to; ++i, ++next) {
    rows[i] = next;
    rows[length + i] = next;
    rows[2 * length + i] = next;
  }
}

// theta^(-2j / dim) for j < count, computed in f32 as transformers does.
std::vector<float> inverse_frequencies(double theta, std::int64_t dim, std::int64_t count) {
  std::vector<float> result(static_cast<std::size_t>(count));
  for (std::int64_t j = 0; j < count; ++j) {
    const float exponent = static_cast<float>(2 * j) / static_cast<float>(dim);
    result[static_cast<std::size_t>(j)] = 1.0f / std::pow(static_cast<float>(theta), exponent);
  }
  return result;
}

float rounded(float value, bool round_to_bf16) {
  return round_to_bf16 ? bf16_to_f32(f32_to_bf16(value)) : value;
}

}  // namespace

std::int64_t merged_token_count(const ImageGrid& grid, std::int64_t spatial_merge_size) {
  return grid.t * (grid.h / spatial_merge_size) * (grid.w / spatial_merge_size);
}

Tensor mrope_position_ids(std::span<const std::int64_t> input_ids, std::span<const ImageGrid> grids,
                          const Qwen25VlConfig& config) {
  const std::int64_t merge = config.vision.spatial_merge_size;
  const std::size_t length = input_ids.size();
  if (config.video_token_id >= 0 &&
      std::find(input_ids.begin(), input_ids.end(), config.video_token_id) != input_ids.end()) {
    throw InvalidInputError(
        fmt::format("the prompt contains video tokens (id {}); only still images are supported",
                    config.video_token_id));
  }
  auto rows = std::make_shared<std::vector<std::int64_t>>(3 * length);
  std::int64_t* data = rows->data();

  std::size_t cursor = 0;
  std::int64_t next = 0;
  for (std::size_t image = 0; image < grids.size(); ++image) {
    const ImageGrid& grid = grids[image];
    check_grid(grid, image, merge);
    const std::size_t start = find_token(input_ids, cursor, config.image_token_id);
    if (start == length) {
      throw InvalidInputError(fmt::format(
          "{} image grids were given but the prompt has image tokens (id {}) for only {} images",
          grids.size(), config.image_token_id, image));
    }
    const std::int64_t count = merged_token_count(grid, merge);
    check_image_span(input_ids, start, count, image, grid, config);
    write_text_positions(data, length, cursor, start, next);

    // [t, h / merge, w / merge] tokens at (next, next + row, next + column).
    const std::int64_t rows_merged = grid.h / merge;
    const std::int64_t columns_merged = grid.w / merge;
    for (std::int64_t k = 0; k < count; ++k) {
      const std::size_t i = start + static_cast<std::size_t>(k);
      const std::int64_t within_frame = k % (rows_merged * columns_merged);
      data[i] = next;
      data[length + i] = next + within_frame / columns_merged;
      data[2 * length + i] = next + within_frame % columns_merged;
    }
    next += std::max(rows_merged, columns_merged);
    cursor = start + static_cast<std::size_t>(count);
  }
  const std::size_t stray = find_token(input_ids, cursor, config.image_token_id);
  if (stray != length) {
    throw InvalidInputError(fmt::format(
        "the prompt has image tokens (id {}) at position {} beyond the {} images whose grids "
        "were given",
        config.image_token_id, stray, grids.size()));
  }
  write_text_positions(data, length, cursor, length, next);

  const std::int64_t columns = static_cast<std::int64_t>(length);
  return Tensor::from_blob(data, {3, columns}, DType::int64, std::move(rows));
}

Qwen25VlRopeTables text_rope_tables(const Tensor& position_ids, const Qwen25VlTextConfig& config,
                                    bool round_to_bf16) {
  if (position_ids.dim() != 2 || position_ids.size(0) != 3 ||
      position_ids.dtype() != DType::int64) {
    throw Error(fmt::format("text_rope_tables: position_ids must be int64 [3, S], got {}",
                            position_ids.describe()));
  }
  const std::int64_t length = position_ids.size(1);
  const std::int64_t half = config.head_dim / 2;
  Qwen25VlRopeTables tables{Tensor::empty({length, half}, DType::f32),
                            Tensor::empty({length, half}, DType::f32)};
  if (tables.cos.is_dry() || position_ids.is_dry()) {
    return tables;
  }

  const std::vector<float> inv_freq = inverse_frequencies(config.rope_theta, config.head_dim, half);
  std::vector<int> axis_of(static_cast<std::size_t>(half));
  for (std::int64_t j = 0; j < half; ++j) {
    const std::int64_t first_w = config.mrope_section[0] + config.mrope_section[1];
    axis_of[static_cast<std::size_t>(j)] = j < config.mrope_section[0] ? 0 : (j < first_w ? 1 : 2);
  }
  // Read through the strides: a copy would allocate only in real runs.
  const std::int64_t* ids = position_ids.data_as<std::int64_t>();
  const std::int64_t axis_stride = position_ids.stride(0);
  const std::int64_t token_stride = position_ids.stride(1);
  float* cos = tables.cos.data_as<float>();
  float* sin = tables.sin.data_as<float>();
  for (std::int64_t s = 0; s < length; ++s) {
    for (std::int64_t j = 0; j < half; ++j) {
      const std::int64_t axis = axis_of[static_cast<std::size_t>(j)];
      const float angle = static_cast<float>(ids[axis * axis_stride + s * token_stride]) *
                          inv_freq[static_cast<std::size_t>(j)];
      cos[s * half + j] =
          rounded(static_cast<float>(std::cos(static_cast<double>(angle))), round_to_bf16);
      sin[s * half + j] =
          rounded(static_cast<float>(std::sin(static_cast<double>(angle))), round_to_bf16);
    }
  }
  return tables;
}

VisionWindowLayout vision_window_layout(std::span<const ImageGrid> grids,
                                        const Qwen25VlVisionConfig& config) {
  const std::int64_t merge = config.spatial_merge_size;
  const std::int64_t unit = config.merge_unit();
  const std::int64_t window = config.merged_window_size();
  if (grids.empty()) {
    throw InvalidInputError("the vision tower needs at least one image grid");
  }
  VisionWindowLayout layout;
  layout.cu_window_seqlens = {0};
  layout.cu_seqlens = {0};
  std::int64_t first_token = 0;  // merged-token number of the image's first token
  for (std::size_t image = 0; image < grids.size(); ++image) {
    const ImageGrid& grid = grids[image];
    check_grid(grid, image, merge);
    const std::int64_t rows = grid.h / merge;
    const std::int64_t columns = grid.w / merge;
    // transformers pads by window - n % window, so an exact multiple gains an empty window.
    const std::int64_t window_rows = (rows + window - rows % window) / window;
    const std::int64_t window_columns = (columns + window - columns % window) / window;
    for (std::int64_t frame = 0; frame < grid.t; ++frame) {
      const std::int64_t frame_start = first_token + frame * rows * columns;
      for (std::int64_t wr = 0; wr < window_rows; ++wr) {
        for (std::int64_t wc = 0; wc < window_columns; ++wc) {
          std::int64_t count = 0;
          for (std::int64_t r = wr * window; r < std::min(rows, (wr + 1) * window); ++r) {
            for (std::int64_t c = wc * window; c < std::min(columns, (wc + 1) * window); ++c) {
              layout.window_index.push_back(frame_start + r * columns + c);
              ++count;
            }
          }
          if (count > 0) {  // an empty padding window would repeat the previous offset
            layout.cu_window_seqlens.push_back(layout.cu_window_seqlens.back() + count * unit);
          }
        }
      }
      layout.cu_seqlens.push_back(layout.cu_seqlens.back() + grid.h * grid.w);
    }
    first_token += grid.t * rows * columns;
  }
  return layout;
}

Qwen25VlRopeTables vision_rope_tables(std::span<const ImageGrid> grids,
                                      const VisionWindowLayout& layout,
                                      const Qwen25VlVisionConfig& config) {
  const std::int64_t half = config.head_dim() / 2;
  const std::int64_t quarter = half / 2;
  const std::int64_t patches = layout.patch_count();
  Qwen25VlRopeTables tables{Tensor::empty({patches, half}, DType::f32),
                            Tensor::empty({patches, half}, DType::f32)};
  if (tables.cos.is_dry()) {
    return tables;
  }

  // (row, column) of every patch in processor order.
  const std::int64_t merge = config.spatial_merge_size;
  std::vector<std::int64_t> patch_row;
  std::vector<std::int64_t> patch_column;
  patch_row.reserve(static_cast<std::size_t>(patches));
  patch_column.reserve(static_cast<std::size_t>(patches));
  for (const ImageGrid& grid : grids) {
    for (std::int64_t frame = 0; frame < grid.t; ++frame) {
      for (std::int64_t block_row = 0; block_row < grid.h / merge; ++block_row) {
        for (std::int64_t block_column = 0; block_column < grid.w / merge; ++block_column) {
          for (std::int64_t r = 0; r < merge; ++r) {
            for (std::int64_t c = 0; c < merge; ++c) {
              patch_row.push_back(block_row * merge + r);
              patch_column.push_back(block_column * merge + c);
            }
          }
        }
      }
    }
  }

  const std::vector<float> inv_freq = inverse_frequencies(10000.0, half, quarter);
  const std::int64_t unit = config.merge_unit();
  float* cos = tables.cos.data_as<float>();
  float* sin = tables.sin.data_as<float>();
  for (std::size_t i = 0; i < layout.window_index.size(); ++i) {
    for (std::int64_t k = 0; k < unit; ++k) {
      const auto source = static_cast<std::size_t>(layout.window_index[i] * unit + k);
      const std::int64_t target = static_cast<std::int64_t>(i) * unit + k;
      for (std::int64_t j = 0; j < half; ++j) {
        const std::int64_t position = j < quarter ? patch_row[source] : patch_column[source];
        const float angle =
            static_cast<float>(position) * inv_freq[static_cast<std::size_t>(j % quarter)];
        cos[target * half + j] = static_cast<float>(std::cos(static_cast<double>(angle)));
        sin[target * half + j] = static_cast<float>(std::sin(static_cast<double>(angle)));
      }
    }
  }
  return tables;
}

}  // namespace ethereal
