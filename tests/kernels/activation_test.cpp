#include "kernels/cpu/activation.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
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

double gelu_tanh_reference(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}
double gelu_erf_reference(double x) {
  return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
}
double silu_reference(double x) {
  return x / (1.0 + std::exp(-x));
}

std::vector<double> apply_reference(const std::vector<float>& x, double (*f)(double)) {
  std::vector<double> y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    y[i] = f(x[i]);
  }
  return y;
}

struct Activation {
  const char* name;
  Tensor (*out_of_place)(const Tensor&);
  void (*in_place)(Tensor&);
  double (*reference)(double);
};

const Activation kActivations[] = {
    {"gelu_tanh", gelu_tanh, gelu_tanh_, gelu_tanh_reference},
    {"gelu_erf", gelu_erf, gelu_erf_, gelu_erf_reference},
    {"silu", silu, silu_, silu_reference},
};

// Absolute error allowed in f32: the vector exp and erf are accurate to a few 1e-7, which the
// formulas scale by up to |x|.
constexpr double kAbsolute = 2e-6;
constexpr double kRelative = 4e-6;

TEST(Activation, OddSizesMatchReference) {
  for (const Activation& activation : kActivations) {
    for (DType dtype : {DType::f32, DType::bf16}) {
      for (const Shape& shape : {Shape{1}, Shape{3, 17}, Shape{33, 127}, Shape{2, 5, 33}}) {
        const Tensor x = uniform_tensor(shape, dtype, 17, -6.0f, 6.0f);
        const Tensor y = activation.out_of_place(x);
        ASSERT_EQ(y.shape(), shape);
        ASSERT_EQ(y.dtype(), dtype);
        expect_near_all(y.to_floats(), apply_reference(x.to_floats(), activation.reference),
                        kAbsolute, kRelative + rounding_error(dtype),
                        std::string(activation.name) + " " + std::string(dtype_name(dtype)) + " " +
                            shape_str(shape));
      }
    }
  }
}

TEST(Activation, ExtremeInputs) {
  const std::vector<float> values{-1e30f, -1e4f, -100.0f, -20.0f, -1e-6f, 0.0f,
                                  1e-6f,  20.0f, 100.0f,  1e4f,   1e30f};
  const Tensor x = Tensor::from_floats(values, {static_cast<std::int64_t>(values.size())});
  for (const Activation& activation : kActivations) {
    const std::vector<float> y = activation.out_of_place(x).to_floats();
    const auto expected = apply_reference(values, activation.reference);
    for (std::size_t i = 0; i < values.size(); ++i) {
      EXPECT_TRUE(std::isfinite(y[i])) << activation.name << " at " << values[i];
    }
    expect_near_all(y, expected, kAbsolute, kRelative, activation.name);
  }
}

TEST(Activation, NanPropagates) {
  const Tensor x = Tensor::from_floats(std::vector<float>{std::nanf(""), 1.0f}, {2});
  for (const Activation& activation : kActivations) {
    EXPECT_TRUE(std::isnan(activation.out_of_place(x).to_floats()[0])) << activation.name;
  }
}

TEST(Activation, ZeroDimensionalTensor) {
  const Tensor x = Tensor::from_floats(std::vector<float>{1.5f}, {});
  const Tensor y = silu(x);
  EXPECT_EQ(y.shape(), Shape{});
  EXPECT_NEAR(y.to_floats()[0], silu_reference(1.5), 1e-6);
}

TEST(Activation, InPlaceMatchesOutOfPlace) {
  for (const Activation& activation : kActivations) {
    for (DType dtype : {DType::f32, DType::bf16}) {
      const Tensor x = uniform_tensor({7, 130}, dtype, 19, -4.0f, 4.0f);
      Tensor y = x.clone();
      activation.in_place(y);
      EXPECT_EQ(y.to_floats(), activation.out_of_place(x).to_floats()) << activation.name;
    }
  }
}

TEST(Activation, DryRunAllocatesLikeRealRun) {
  for (const Activation& activation : kActivations) {
    expect_dry_run_matches(
        [&] {
          return activation.out_of_place(uniform_tensor({33, 70}, DType::bf16, 1));
        },
        activation.name);
  }
}

TEST(Activation, RejectsIntegerInput) {
  const Tensor x = Tensor::zeros({4}, DType::uint8);
  expect_error_containing([&] { silu(x); }, {"silu", "f32 or bf16", "uint8[4]"});
}

TEST(Swiglu, HalvesOfFusedProjection) {
  // gate and up as the two column halves of one [S, 2F] projection output.
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Tensor fused = uniform_tensor({9, 2 * 37}, dtype, 23, -5.0f, 5.0f);
    const Tensor gate = fused.narrow(1, 0, 37);
    const Tensor up = fused.narrow(1, 37, 37);
    const Tensor y = swiglu(gate, up);
    ASSERT_EQ(y.shape(), (Shape{9, 37}));
    const std::vector<float> g = gate.to_floats();
    const std::vector<float> u = up.to_floats();
    std::vector<double> expected(g.size());
    for (std::size_t i = 0; i < g.size(); ++i) {
      expected[i] = silu_reference(g[i]) * u[i];
    }
    expect_near_all(y.to_floats(), expected, 1e-5, kRelative + rounding_error(dtype),
                    std::string("swiglu ") + std::string(dtype_name(dtype)));
    Tensor in_place = gate.clone();
    swiglu_(in_place, up);
    EXPECT_EQ(in_place.to_floats(), y.to_floats());
  }
}

TEST(Swiglu, MixedDtypesUseGateDtype) {
  const Tensor gate = uniform_tensor({3, 20}, DType::bf16, 29);
  const Tensor up = uniform_tensor({3, 20}, DType::f32, 31);
  EXPECT_EQ(swiglu(gate, up).dtype(), DType::bf16);
}

TEST(Swiglu, RejectsShapeMismatch) {
  const Tensor gate = Tensor::zeros({3, 20}, DType::f32);
  const Tensor up = Tensor::zeros({3, 21}, DType::f32);
  expect_error_containing([&] { swiglu(gate, up); }, {"swiglu", "[3, 20]", "[3, 21]"});
}

}  // namespace
}  // namespace ethereal::cpu
