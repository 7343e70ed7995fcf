#include "kernels/cpu/elementwise.h"

#include <gtest/gtest.h>

#include <functional>
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

// Reference binary op with NumPy broadcasting over the logical values of a and b.
std::vector<double> reference_binary(const Tensor& a, const Tensor& b,
                                     const std::function<double(double, double)>& op) {
  const Shape shape = broadcast_shapes(a.shape(), b.shape());
  const std::vector<float> av = a.to_floats();
  const std::vector<float> bv = b.to_floats();
  const auto index_of = [&](const Tensor& t, std::int64_t flat) {
    // Maps a flat index of the broadcast shape to a flat index of t.
    std::int64_t result = 0;
    std::int64_t stride = 1;
    for (std::int64_t axis = static_cast<std::int64_t>(shape.size()) - 1, t_axis = t.dim() - 1;
         axis >= 0; --axis, --t_axis) {
      const std::int64_t i = flat % shape[axis];
      flat /= shape[axis];
      if (t_axis >= 0) {
        const std::int64_t extent = t.size(t_axis);
        result += (extent == 1 ? 0 : i) * stride;
        stride *= extent;
      }
    }
    return result;
  };
  std::vector<double> out(static_cast<std::size_t>(shape_numel(shape)));
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i] = op(av[index_of(a, static_cast<std::int64_t>(i))],
                bv[index_of(b, static_cast<std::int64_t>(i))]);
  }
  return out;
}

struct Case {
  Shape a;
  Shape b;
};

const Case kCases[] = {
    {{7}, {7}},                   // same shape
    {{33, 130}, {130}},           // row vector
    {{2, 17, 5, 3}, {17, 1, 1}},  // per-channel vector of NCHW
    {{3, 1, 5}, {1, 4, 1}},       // both operands stretch
    {{9, 31}, {1}},               // scalar
    {{1}, {4, 3}},                // first operand stretches
    {{20000}, {20000}},           // more than one inner block
};

TEST(Elementwise, BroadcastingMatchesReference) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (const Case& c : kCases) {
      const Tensor a = uniform_tensor(c.a, dtype, 43, -3.0f, 3.0f);
      const Tensor b = uniform_tensor(c.b, dtype, 47, -3.0f, 3.0f);
      const std::string label =
          std::string(dtype_name(dtype)) + " " + shape_str(c.a) + " op " + shape_str(c.b);
      const double relative = rounding_error(dtype);
      expect_near_all(add(a, b).to_floats(),
                      reference_binary(a, b, [](double x, double y) { return x + y; }), 1e-6,
                      relative, "add " + label);
      expect_near_all(sub(a, b).to_floats(),
                      reference_binary(a, b, [](double x, double y) { return x - y; }), 1e-6,
                      relative, "sub " + label);
      expect_near_all(mul(a, b).to_floats(),
                      reference_binary(a, b, [](double x, double y) { return x * y; }), 1e-6,
                      relative, "mul " + label);
      EXPECT_EQ(add(a, b).shape(), broadcast_shapes(c.a, c.b));
    }
  }
}

TEST(Elementwise, MixedDtypesTakeFirstOperandDtype) {
  const Tensor a = uniform_tensor({5, 16}, DType::bf16, 51);
  const Tensor b = uniform_tensor({16}, DType::f32, 53);
  const Tensor y = add(a, b);
  EXPECT_EQ(y.dtype(), DType::bf16);
  expect_near_all(y.to_floats(), reference_binary(a, b, [](double x, double z) { return x + z; }),
                  1e-6, rounding_error(DType::bf16), "mixed");
}

TEST(Elementwise, TransposedOperandTakesScalarPath) {
  const Tensor a = uniform_tensor({6, 9}, DType::f32, 55);
  const Tensor b = uniform_tensor({9, 6}, DType::f32, 57).transpose(0, 1);
  expect_near_all(mul(a, b).to_floats(),
                  reference_binary(a, b, [](double x, double y) { return x * y; }), 1e-6, 1e-7,
                  "transposed");
}

TEST(Elementwise, InPlaceForms) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Tensor a = uniform_tensor({4, 33}, dtype, 59);
    const Tensor row = uniform_tensor({33}, DType::f32, 61);
    const double relative = rounding_error(dtype);
    Tensor sum = a.clone();
    add_(sum, row);
    EXPECT_EQ(sum.to_floats(), add(a, row).to_floats());
    Tensor difference = a.clone();
    sub_(difference, row);
    EXPECT_EQ(difference.to_floats(), sub(a, row).to_floats());
    Tensor product = a.clone();
    mul_(product, row);
    EXPECT_EQ(product.to_floats(), mul(a, row).to_floats());
    Tensor euler = a.clone();
    add_scaled_(euler, row, -0.25f);
    expect_near_all(euler.to_floats(),
                    reference_binary(a, row, [](double x, double y) { return x - 0.25 * y; }), 1e-6,
                    relative, "add_scaled_");
  }
}

TEST(Elementwise, InPlaceOnStridedView) {
  Tensor wide = uniform_tensor({3, 40}, DType::f32, 63);
  Tensor right = wide.narrow(1, 20, 20);
  const std::vector<float> left_before = wide.narrow(1, 0, 20).to_floats();
  const Tensor ones = Tensor::from_floats(std::vector<float>(20, 1.0f), {20});
  const std::vector<float> right_before = right.to_floats();
  add_(right, ones);
  const std::vector<float> right_after = right.to_floats();
  for (std::size_t i = 0; i < right_after.size(); ++i) {
    EXPECT_FLOAT_EQ(right_after[i], right_before[i] + 1.0f);
  }
  EXPECT_EQ(wide.narrow(1, 0, 20).to_floats(), left_before);
}

TEST(Elementwise, ScaleByScalar) {
  const Tensor x = uniform_tensor({7, 33}, DType::bf16, 65);
  const std::vector<float> values = x.to_floats();
  std::vector<double> expected(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    expected[i] = values[i] * 0.125;
  }
  expect_near_all(scale(x, 0.125f).to_floats(), expected, 0.0, 0.0, "scale by a power of two");
  Tensor in_place = x.clone();
  scale_(in_place, 0.125f);
  EXPECT_EQ(in_place.to_floats(), scale(x, 0.125f).to_floats());
}

TEST(Elementwise, RejectsShapesThatDoNotBroadcast) {
  const Tensor a = Tensor::zeros({3, 4}, DType::f32);
  const Tensor b = Tensor::zeros({5}, DType::f32);
  expect_error_containing([&] { add(a, b); }, {"[3, 4]", "[5]", "do not broadcast"});
}

TEST(Elementwise, RejectsInPlaceThatWouldGrow) {
  Tensor a = Tensor::zeros({4}, DType::f32);
  const Tensor b = Tensor::zeros({3, 4}, DType::f32);
  expect_error_containing([&] { add_(a, b); }, {"add_", "[3, 4]", "in-place"});
}

TEST(Elementwise, DryRunAllocatesLikeRealRun) {
  expect_dry_run_matches(
      [] {
        return mul(uniform_tensor({2, 17, 9}, DType::bf16, 1),
                   uniform_tensor({17, 1}, DType::f32, 2));
      },
      "mul");
}

}  // namespace
}  // namespace ethereal::cpu
