// Helpers shared by the tests of the oneDNN-backed kernels (linear, matmul, conv2d): seeded
// inputs, rounding to a dtype, tolerance checks against double-precision references, and
// allocator statistics of a run under a fresh allocator.
#pragma once

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/dtype.h"
#include "runtime/tensor.h"
#include "support/allocator_runs.h"
#include "support/inputs.h"

namespace ethereal::cpu::testing {

using test_support::expect_same_statistics;
using test_support::stats_of_run;
using test_support::uniform_values;

// `values` as they read back after a round trip through `dtype` (bf16: to nearest even).
inline std::vector<float> rounded_to(const std::vector<float>& values, DType dtype) {
  if (dtype == DType::f32) {
    return values;
  }
  return test_support::rounded_to_bf16(values);
}

// Reference value with the bound on its error: a sum of `terms` products accumulated in f32
// may be off by about terms * 2^-24 * sum|products|, and rounding to a bf16 output adds up to
// half a unit in the last place, at most 2^-8 of the value.
struct Expected {
  double value = 0.0;
  double absolute_sum = 0.0;  // sum of |products|
  std::int64_t terms = 0;
};

inline double tolerance(const Expected& expected, DType out_dtype) {
  double bound =
      (static_cast<double>(expected.terms) + 2.0) * std::ldexp(1.0, -24) * expected.absolute_sum +
      1e-7;
  if (out_dtype == DType::bf16) {
    bound += std::ldexp(1.0, -8) * std::fabs(expected.value);
  }
  return bound;
}

// Checks every element of `actual` (read as f32) against `expected`, reporting the first
// few mismatches with their index.
inline void expect_matches(const Tensor& actual, const std::vector<Expected>& expected,
                           const std::string& label) {
  const std::vector<float> values = actual.to_floats();
  ASSERT_EQ(values.size(), expected.size()) << label;
  int reported = 0;
  for (std::size_t i = 0; i < values.size() && reported < 5; ++i) {
    const double error = std::fabs(static_cast<double>(values[i]) - expected[i].value);
    if (!(error <= tolerance(expected[i], actual.dtype()))) {
      ADD_FAILURE() << label << ": element " << i << " is " << values[i] << ", expected "
                    << expected[i].value << " within " << tolerance(expected[i], actual.dtype());
      ++reported;
    }
  }
}

}  // namespace ethereal::cpu::testing
