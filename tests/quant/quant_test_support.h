// Helpers shared by the quantisation tests: seeded weight distributions, a double-precision
// linear reference, and allocator statistics of a run under a fresh allocator.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "runtime/allocator.h"
#include "runtime/dtype.h"
#include "runtime/tensor.h"

namespace ethereal::quant::testing {

// Normal values with standard deviation `stddev` from a fixed seed.
inline std::vector<float> normal_values(std::size_t count, std::uint32_t seed,
                                        float stddev = 0.02f) {
  std::mt19937 generator(seed);
  std::normal_distribution<float> distribution(0.0f, stddev);
  std::vector<float> values(count);
  for (float& value : values) {
    value = distribution(generator);
  }
  return values;
}

// Heavy-tailed values: Student's t with 3 degrees of freedom, scaled by 0.02, plus one outlier
// of 40 standard deviations about every 500 values (the kind trained transformer weights have).
inline std::vector<float> heavy_tailed_values(std::size_t count, std::uint32_t seed) {
  std::mt19937 generator(seed);
  std::student_t_distribution<float> distribution(3.0f);
  std::uniform_int_distribution<int> outlier(0, 499);
  std::vector<float> values(count);
  for (float& value : values) {
    value = 0.02f * distribution(generator);
    if (outlier(generator) == 0) {
      value = value >= 0.0f ? 0.8f : -0.8f;
    }
  }
  return values;
}

// Uniform values in [-1, 1) for activations.
inline std::vector<float> uniform_values(std::size_t count, std::uint32_t seed) {
  std::mt19937 generator(seed);
  std::uniform_real_distribution<float> distribution(-1.0f, 1.0f);
  std::vector<float> values(count);
  for (float& value : values) {
    value = distribution(generator);
  }
  return values;
}

inline std::vector<float> rounded_to_bf16(const std::vector<float>& values) {
  std::vector<float> result(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    result[i] = bf16_to_f32(f32_to_bf16(values[i]));
  }
  return result;
}

// y[m, n] = sum_k x[m, k] w[n, k] + bias[n] in double, with sum |x w| + |bias| for tolerances.
struct Reference {
  std::vector<double> value;
  std::vector<double> absolute_sum;
};

inline Reference reference_linear(const std::vector<float>& x, const std::vector<float>& w,
                                  const std::vector<float>& bias, std::int64_t rows, std::int64_t k,
                                  std::int64_t n) {
  Reference result;
  result.value.assign(static_cast<std::size_t>(rows * n), 0.0);
  result.absolute_sum.assign(static_cast<std::size_t>(rows * n), 0.0);
  for (std::int64_t m = 0; m < rows; ++m) {
    for (std::int64_t j = 0; j < n; ++j) {
      double sum = bias.empty() ? 0.0 : bias[static_cast<std::size_t>(j)];
      double absolute = bias.empty() ? 0.0 : std::fabs(sum);
      for (std::int64_t i = 0; i < k; ++i) {
        const double product = static_cast<double>(x[static_cast<std::size_t>(m * k + i)]) *
                               w[static_cast<std::size_t>(j * k + i)];
        sum += product;
        absolute += std::fabs(product);
      }
      result.value[static_cast<std::size_t>(m * n + j)] = sum;
      result.absolute_sum[static_cast<std::size_t>(m * n + j)] = absolute;
    }
  }
  return result;
}

// Allocator statistics of `body` run under a fresh CPU allocator, dry or not.
inline AllocatorStats stats_of_run(bool dry_run, const std::function<void()>& body) {
  CpuCachingAllocator allocator(CpuCachingAllocator::Options{.dry_run = dry_run});
  {
    ScopedAllocator scope(allocator);
    body();
  }
  return allocator.stats();
}

inline void expect_same_statistics(const AllocatorStats& real, const AllocatorStats& dry) {
  EXPECT_EQ(real.allocated_bytes.peak, dry.allocated_bytes.peak);
  EXPECT_EQ(real.reserved_bytes.peak, dry.reserved_bytes.peak);
  EXPECT_EQ(real.requested_bytes.peak, dry.requested_bytes.peak);
  EXPECT_EQ(real.allocation_count, dry.allocation_count);
  EXPECT_EQ(real.allocated_bytes.current, dry.allocated_bytes.current);
  EXPECT_GT(real.allocation_count, 0);
}

}  // namespace ethereal::quant::testing
