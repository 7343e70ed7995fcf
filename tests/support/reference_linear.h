// A double-precision reference of a linear layer, for checking the CPU and quantised kernels.
#pragma once

#include <cstdint>
#include <vector>

namespace ethereal::test_support {

// y[m, j] = sum_i x[m, i] w[j, i] + bias[j] in double, row-major [rows, n], with the sum of
// |x[m, i] w[j, i]| + |bias[j]| per element, which bounds the rounding error of the kernel.
struct LinearReference {
  std::vector<double> value;
  std::vector<double> absolute_sum;
};

// x is [rows, k] and w is [n, k]. An empty `bias` means no bias.
LinearReference reference_linear(const std::vector<float>& x, const std::vector<float>& w,
                                 const std::vector<float>& bias, std::int64_t rows, std::int64_t k,
                                 std::int64_t n);

}  // namespace ethereal::test_support
