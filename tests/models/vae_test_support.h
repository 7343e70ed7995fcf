// Shared helpers of the VAE tests: the committed tiny checkpoint and reference vectors, and
// tensor comparison with a report of the worst element.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>

#include "io/safetensors_checkpoint.h"
#include "runtime/tensor.h"

namespace ethereal::vae_test {

inline std::filesystem::path models_data_dir() {
  return std::filesystem::path(ETHEREAL_TEST_DATA_DIR) / "models";
}

inline std::filesystem::path tiny_vae_dir() {
  return models_data_dir() / "tiny" / "vae";
}

// A reference tensor stored with the video frame axis [1, C, 1, H, W], returned as
// [1, C, H, W] f32 (a copy, so it outlives the checkpoint).
inline Tensor load_frame(const SafetensorsCheckpoint& file, const std::string& name) {
  const Tensor stored = file.tensor(name);
  EXPECT_EQ(stored.dim(), 5) << name;
  EXPECT_EQ(stored.size(2), 1) << name;
  return stored.squeeze(2).to(DType::f32).clone();
}

struct Difference {
  double max_abs = 0.0;
  double max_ref = 0.0;
  double mean_abs = 0.0;
  std::int64_t worst_index = -1;
};

inline Difference difference(const Tensor& actual, const Tensor& expected) {
  EXPECT_EQ(actual.shape(), expected.shape());
  Difference result;
  if (actual.shape() != expected.shape()) {
    return result;
  }
  const std::vector<float> a = actual.to_floats();
  const std::vector<float> b = expected.to_floats();
  double sum = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    sum += d;
    result.max_ref = std::max(result.max_ref, std::fabs(static_cast<double>(b[i])));
    if (d > result.max_abs || std::isnan(d)) {
      result.max_abs = std::isnan(d) ? INFINITY : d;
      result.worst_index = static_cast<std::int64_t>(i);
    }
  }
  result.mean_abs = a.empty() ? 0.0 : sum / static_cast<double>(a.size());
  return result;
}

// Expects |actual - expected| <= abs_tolerance + rel_tolerance * |expected| elementwise.
inline void expect_close(const Tensor& actual, const Tensor& expected, double abs_tolerance,
                         double rel_tolerance, const std::string& what) {
  ASSERT_EQ(actual.shape(), expected.shape()) << what;
  const std::vector<float> a = actual.to_floats();
  const std::vector<float> b = expected.to_floats();
  std::int64_t failures = 0;
  std::size_t first_failure = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double bound = abs_tolerance + rel_tolerance * std::fabs(static_cast<double>(b[i]));
    if (!(std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])) <= bound)) {
      if (failures++ == 0) {
        first_failure = i;
      }
    }
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " of " << a.size()
                         << " elements differ, first at flat index " << first_failure << ": "
                         << a[first_failure] << " vs expected " << b[first_failure]
                         << " (max abs diff " << difference(actual, expected).max_abs << ")";
}

}  // namespace ethereal::vae_test
