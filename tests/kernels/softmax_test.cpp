#include "kernels/cpu/softmax.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "vector_kernels_test_support.h"

namespace ethereal::cpu {
namespace {

using vector_testing::expect_dry_run_matches;
using vector_testing::expect_error_containing;
using vector_testing::expect_near_all;
using vector_testing::rounding_error;
using vector_testing::uniform_tensor;

std::vector<double> reference_softmax(const std::vector<float>& x, std::int64_t cols) {
  std::vector<double> y(x.size());
  for (std::size_t row = 0; row < x.size() / cols; ++row) {
    const float* in = x.data() + row * cols;
    double max = -std::numeric_limits<double>::infinity();
    for (std::int64_t i = 0; i < cols; ++i) {
      max = std::max<double>(max, in[i]);
    }
    double sum = 0.0;
    for (std::int64_t i = 0; i < cols; ++i) {
      sum += std::exp(in[i] - max);
    }
    for (std::int64_t i = 0; i < cols; ++i) {
      y[row * cols + i] = std::exp(in[i] - max) / sum;
    }
  }
  return y;
}

TEST(Softmax, OddSizesMatchReference) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (std::int64_t rows : {1, 7, 33}) {
      for (std::int64_t cols : {1, 3, 17, 33, 127, 130}) {
        const Tensor x = uniform_tensor({rows, cols}, dtype, 37, -8.0f, 8.0f);
        const Tensor y = softmax(x);
        expect_near_all(y.to_floats(), reference_softmax(x.to_floats(), cols), 1e-7,
                        1e-5 + rounding_error(dtype),
                        std::string(dtype_name(dtype)) + " " + shape_str(x.shape()));
        Tensor in_place = x.clone();
        softmax_(in_place);
        EXPECT_EQ(in_place.to_floats(), y.to_floats());
      }
    }
  }
}

TEST(Softmax, LargeLogitsAndInfinities) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> values{1000.0f, 999.0f, -inf, -1000.0f, 998.0f};
  const Tensor x = Tensor::from_floats(values, {1, 5});
  expect_near_all(softmax(x).to_floats(), reference_softmax(values, 5), 1e-7, 1e-5, "large");
}

TEST(Softmax, StridedRowsAndDryRun) {
  const Tensor wide = uniform_tensor({5, 40}, DType::f32, 41);
  const Tensor left = wide.narrow(1, 0, 17);
  expect_near_all(softmax(left).to_floats(), reference_softmax(left.to_floats(), 17), 1e-7, 1e-5,
                  "strided");
  expect_dry_run_matches(
      [] {
        return softmax(uniform_tensor({7, 33}, DType::bf16, 1));
      },
      "softmax");
}

TEST(Softmax, RejectsLastAxisStride) {
  const Tensor x = Tensor::zeros({4, 6}, DType::f32).transpose(0, 1);
  expect_error_containing([&] { softmax(x); }, {"softmax", "stride 1 on its last axis"});
}

}  // namespace
}  // namespace ethereal::cpu
