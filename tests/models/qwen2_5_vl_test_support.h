// Helpers shared by the Qwen2.5-VL tests: paths of the tiny model and the reference vectors,
// readers of int64 tensors, comparisons and message capture.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "io/image.h"
#include "io/safetensors.h"
#include "models/qwen2_5_vl/positions.h"
#include "runtime/error.h"
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

// A fresh directory under ::testing::TempDir(), removed with its contents at scope exit.
class TemporaryDirectory {
 public:
  TemporaryDirectory() {
    std::string pattern =
        (std::filesystem::path(::testing::TempDir()) / "ethereal-qwen-vl-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error("mkdtemp failed for " + pattern);
    }
    path_ = pattern;
  }
  ~TemporaryDirectory() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TemporaryDirectory(const TemporaryDirectory&) = delete;
  TemporaryDirectory& operator=(const TemporaryDirectory&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

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

// The largest |a - b| over all elements; a and b must have the same number of elements.
inline float max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.to_floats();
  const std::vector<float> y = b.to_floats();
  if (x.size() != y.size()) {
    throw std::runtime_error("max_abs_diff: " + a.describe() + " vs " + b.describe());
  }
  float result = 0.0f;
  for (std::size_t i = 0; i < x.size(); ++i) {
    result = std::max(result, std::fabs(x[i] - y[i]));
  }
  return result;
}

inline float max_abs(const Tensor& a) {
  float result = 0.0f;
  for (float value : a.to_floats()) {
    result = std::max(result, std::fabs(value));
  }
  return result;
}

// An RGB image from a uint8 [H, W, 3] tensor.
inline Image image_from_hwc(const Tensor& hwc) {
  const auto* data = hwc.data_as<std::uint8_t>();
  std::vector<std::uint8_t> pixels(data, data + hwc.numel());
  return Image(static_cast<int>(hwc.size(1)), static_cast<int>(hwc.size(0)), 3, std::move(pixels));
}

// The message of the InvalidInputError `action` throws, or "" when it throws none.
inline std::string invalid_input_message(const std::function<void()>& action) {
  try {
    action();
  } catch (const InvalidInputError& error) {
    return error.what();
  }
  return "";
}

}  // namespace ethereal::qwen2_5_vl_test
