// Helpers shared by the Qwen2.5-VL tests: paths of the tiny model and the reference vectors,
// readers of int64 tensors, and images from reference tensors.
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "io/image.h"
#include "io/safetensors.h"
#include "models/qwen2_5_vl/positions.h"
#include "runtime/tensor.h"

namespace ethereal::qwen2_5_vl_test {

inline std::filesystem::path tiny_text_encoder_dir() {
  return std::filesystem::path(ETHEREAL_TEST_DATA_DIR) / "models/tiny/text_encoder";
}

// The reference cases: "vision" or "language_model".
inline std::filesystem::path text_encoder_case(const std::string& name) {
  return std::filesystem::path(ETHEREAL_TEST_DATA_DIR) / "models/text_encoder" /
         (name + ".safetensors");
}

// The values of a contiguous int64 tensor.
inline std::vector<std::int64_t> int64_values(const Tensor& tensor) {
  if (tensor.dtype() != DType::int64 || !tensor.is_contiguous()) {
    throw std::runtime_error("int64_values: expected a contiguous int64 tensor, got " +
                             tensor.describe());
  }
  const std::int64_t* data = tensor.data_as<std::int64_t>();
  return {data, data + tensor.numel()};
}

// Grids from an int64 [N, 3] image_grid_thw tensor.
inline std::vector<ImageGrid> grids_of(const Tensor& grid_thw) {
  const std::vector<std::int64_t> values = int64_values(grid_thw);
  std::vector<ImageGrid> grids;
  for (std::size_t i = 0; i + 2 < values.size(); i += 3) {
    grids.push_back({values[i], values[i + 1], values[i + 2]});
  }
  return grids;
}

// An RGB image from a uint8 [H, W, 3] tensor.
inline Image image_from_hwc(const Tensor& hwc) {
  const auto* data = hwc.data_as<std::uint8_t>();
  std::vector<std::uint8_t> pixels(data, data + hwc.numel());
  return Image(static_cast<int>(hwc.size(1)), static_cast<int>(hwc.size(0)), 3, std::move(pixels));
}

}  // namespace ethereal::qwen2_5_vl_test
