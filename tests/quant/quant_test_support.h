// Helpers shared by the quantisation tests: heavy-tailed weight values, and the seeded values,
// double-precision linear reference and allocator statistics of tests/support under the names
// these tests use.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "support/allocator_runs.h"
#include "support/inputs.h"
#include "support/reference_linear.h"

namespace ethereal::quant::testing {

using Reference = test_support::LinearReference;
using test_support::expect_same_statistics;
using test_support::normal_values;
using test_support::reference_linear;
using test_support::rounded_to_bf16;
using test_support::stats_of_run;
using test_support::uniform_values;

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

}  // namespace ethereal::quant::testing
