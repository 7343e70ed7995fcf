#include "support/tensor_compare.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace ethereal::test_support {

float max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.to_floats();
  const std::vector<float> y = b.to_floats();
  if (x.size() != y.size()) {
    throw std::invalid_argument("max_abs_diff: element counts differ: " + a.describe() + " vs " +
                                b.describe());
  }
  float result = 0.0f;
  for (std::size_t i = 0; i < x.size(); ++i) {
    result = std::max(result, std::fabs(x[i] - y[i]));
  }
  return result;
}

float max_abs(const Tensor& tensor) {
  float result = 0.0f;
  for (float value : tensor.to_floats()) {
    result = std::max(result, std::fabs(value));
  }
  return result;
}

void expect_near_all(const std::vector<float>& actual, const std::vector<double>& expected,
                     double absolute, double relative, const std::string& label) {
  ASSERT_EQ(actual.size(), expected.size()) << label;
  int reported = 0;
  for (std::size_t i = 0; i < actual.size() && reported < 5; ++i) {
    const double bound = absolute + relative * std::fabs(expected[i]);
    const double error = std::fabs(static_cast<double>(actual[i]) - expected[i]);
    const bool both_nan = std::isnan(actual[i]) && std::isnan(expected[i]);
    const bool same_infinity = std::isinf(expected[i]) && actual[i] == expected[i];
    if (!(error <= bound) && !both_nan && !same_infinity) {
      ADD_FAILURE() << label << ": element " << i << " is " << actual[i] << ", expected "
                    << expected[i] << " within " << bound;
      ++reported;
    }
  }
}

}  // namespace ethereal::test_support
