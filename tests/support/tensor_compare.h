// Element-wise comparison of test results with references.
#pragma once

#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace ethereal::test_support {

// The largest |a[i] - b[i]| over all elements, read as f32. Throws std::invalid_argument when
// the element counts differ.
float max_abs_diff(const Tensor& a, const Tensor& b);

// The largest |value| over all elements, read as f32.
float max_abs(const Tensor& tensor);

// Expects |actual[i] - expected[i]| <= absolute + relative * |expected[i]| for every element;
// NaN matches NaN and an infinity matches itself. Reports the first five mismatches with their
// flat index, each prefixed with `label`.
void expect_near_all(const std::vector<float>& actual, const std::vector<double>& expected,
                     double absolute, double relative, const std::string& label);

}  // namespace ethereal::test_support
