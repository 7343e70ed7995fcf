#include "support/reference_linear.h"

#include <cmath>
#include <cstddef>

namespace ethereal::test_support {

LinearReference reference_linear(const std::vector<float>& x, const std::vector<float>& w,
                                 const std::vector<float>& bias, std::int64_t rows, std::int64_t k,
                                 std::int64_t n) {
  LinearReference result;
  result.value.assign(static_cast<std::size_t>(rows * n), 0.0);
  result.absolute_sum.assign(static_cast<std::size_t>(rows * n), 0.0);
  for (std::int64_t m = 0; m < rows; ++m) {
    for (std::int64_t j = 0; j < n; ++j) {
      double sum = bias.empty() ? 0.0 : bias[static_cast<std::size_t>(j)];
      double absolute = std::fabs(sum);
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

}  // namespace ethereal::test_support
