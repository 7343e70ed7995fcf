#include "kernels/cpu/norm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "runtime/dtype.h"
#include "vector_kernels_test_support.h"

namespace ethereal::cpu {
namespace {

using vector_testing::expect_dry_run_matches;
using vector_testing::expect_error_containing;
using vector_testing::expect_near_all;
using vector_testing::rounding_error;
using vector_testing::uniform_tensor;

double round_bf16(double value) {
  return bf16_to_f32(f32_to_bf16(static_cast<float>(value)));
}

std::vector<double> reference_layer_norm(const std::vector<float>& x, std::int64_t cols,
                                         double eps) {
  std::vector<double> y(x.size());
  for (std::size_t row = 0; row < x.size() / cols; ++row) {
    const float* in = x.data() + row * cols;
    double mean = 0.0;
    for (std::int64_t i = 0; i < cols; ++i) {
      mean += in[i];
    }
    mean /= static_cast<double>(cols);
    double variance = 0.0;
    for (std::int64_t i = 0; i < cols; ++i) {
      variance += (in[i] - mean) * (in[i] - mean);
    }
    variance /= static_cast<double>(cols);
    for (std::int64_t i = 0; i < cols; ++i) {
      y[row * cols + i] = (in[i] - mean) / std::sqrt(variance + eps);
    }
  }
  return y;
}

// weight empty: no weight. round_normalised: round x * rstd to bf16 before the product.
std::vector<double> reference_rms_norm(const std::vector<float>& x,
                                       const std::vector<float>& weight, std::int64_t cols,
                                       double eps, bool round_normalised) {
  std::vector<double> y(x.size());
  for (std::size_t row = 0; row < x.size() / cols; ++row) {
    const float* in = x.data() + row * cols;
    double squares = 0.0;
    for (std::int64_t i = 0; i < cols; ++i) {
      squares += static_cast<double>(in[i]) * in[i];
    }
    const double rstd = 1.0 / std::sqrt(squares / static_cast<double>(cols) + eps);
    for (std::int64_t i = 0; i < cols; ++i) {
      double value = in[i] * rstd;
      if (!weight.empty()) {
        value = (round_normalised ? round_bf16(value) : value) * weight[i];
      }
      y[row * cols + i] = value;
    }
  }
  return y;
}

TEST(LayerNorm, OddSizesMatchReference) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (std::int64_t rows : {1, 3, 33}) {
      for (std::int64_t cols : {1, 3, 17, 33, 127, 3072}) {
        const Tensor x = uniform_tensor({rows, cols}, dtype, 7, -3.0f, 5.0f);
        const Tensor y = layer_norm(x);
        ASSERT_EQ(y.shape(), x.shape());
        ASSERT_EQ(y.dtype(), dtype);
        // Normalised values reach a few units; f32 statistics add about 1e-6 relative.
        expect_near_all(y.to_floats(), reference_layer_norm(x.to_floats(), cols, 1e-6), 2e-5,
                        2e-5 + rounding_error(dtype),
                        std::string(dtype_name(dtype)) + " " + shape_str(x.shape()));
      }
    }
  }
}

TEST(LayerNorm, LargeMeanKeepsVariance) {
  // Values 1000 +- 0.01: a one-pass E[x^2] - mean^2 would lose the variance entirely in f32.
  std::vector<float> values(256);
  for (std::size_t i = 0; i < values.size(); ++i) {
    values[i] = 1000.0f + (i % 2 == 0 ? 0.01f : -0.01f);
  }
  const Tensor x = Tensor::from_floats(values, {1, 256});
  expect_near_all(layer_norm(x, 1e-12f).to_floats(), reference_layer_norm(values, 256, 1e-12), 2e-3,
                  0.0, "large mean");
}

TEST(LayerNorm, InPlaceOnStridedRows) {
  // The left half of a [5, 2 * 40] matrix: rows are 80 elements apart.
  Tensor wide = uniform_tensor({5, 80}, DType::bf16, 9);
  Tensor left = wide.narrow(1, 0, 40);
  const std::vector<float> before = left.to_floats();
  const std::vector<float> right_before = wide.narrow(1, 40, 40).to_floats();
  layer_norm_(left, 1e-5f);
  expect_near_all(left.to_floats(), reference_layer_norm(before, 40, 1e-5), 2e-5,
                  2e-5 + rounding_error(DType::bf16), "in place");
  EXPECT_EQ(wide.narrow(1, 40, 40).to_floats(), right_before);
}

TEST(LayerNorm, DryRunAllocatesLikeRealRun) {
  expect_dry_run_matches(
      [] {
        return layer_norm(uniform_tensor({33, 130}, DType::bf16, 1));
      },
      "layer_norm");
}

TEST(LayerNorm, RejectsIntegerInput) {
  const Tensor x = Tensor::zeros({2, 3}, DType::int32);
  expect_error_containing([&] { layer_norm(x); }, {"layer_norm", "'x'", "f32 or bf16", "int32"});
}

TEST(RmsNorm, WeightDtypesMatchReference) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (DType weight_dtype : {DType::f32, DType::bf16}) {
      for (std::int64_t cols : {1, 16, 17, 80, 128, 3584}) {
        const Tensor x = uniform_tensor({7, cols}, dtype, 3, -4.0f, 4.0f);
        const Tensor weight = uniform_tensor({cols}, weight_dtype, 4, 0.5f, 1.5f);
        const Tensor y = rms_norm(x, weight);
        const bool rounded = weight_dtype == DType::bf16;
        const auto expected =
            reference_rms_norm(x.to_floats(), weight.to_floats(), cols, 1e-6, rounded);
        expect_near_all(y.to_floats(), expected, 1e-6, 2e-6 + rounding_error(dtype),
                        std::string(dtype_name(dtype)) + " weight " +
                            std::string(dtype_name(weight_dtype)) + " cols " +
                            std::to_string(cols));
      }
    }
  }
}

TEST(RmsNorm, RoundingBeforeWeightFollowsOption) {
  // f32 input and output make the intermediate bf16 rounding visible on its own.
  const Tensor x = uniform_tensor({4, 64}, DType::f32, 5);
  const Tensor weight = uniform_tensor({64}, DType::bf16, 6, 0.5f, 1.5f);
  RmsNormOptions options;
  options.round_before_weight = false;
  const auto exact = reference_rms_norm(x.to_floats(), weight.to_floats(), 64, 1e-6, false);
  const auto rounded = reference_rms_norm(x.to_floats(), weight.to_floats(), 64, 1e-6, true);
  expect_near_all(rms_norm(x, weight, options).to_floats(), exact, 1e-6, 2e-6, "exact");
  expect_near_all(rms_norm(x, weight).to_floats(), rounded, 1e-6, 2e-6, "rounded");
  EXPECT_NE(rms_norm(x, weight, options).to_floats(), rms_norm(x, weight).to_floats());
}

TEST(RmsNorm, WithoutWeight) {
  const Tensor x = uniform_tensor({3, 33}, DType::f32, 8);
  expect_near_all(rms_norm(x, Tensor()).to_floats(),
                  reference_rms_norm(x.to_floats(), {}, 33, 1e-6, false), 1e-6, 2e-6, "no weight");
}

TEST(RmsNorm, PerHeadOverLastAxis) {
  // q of shape [S, H, D] with a [D] weight: every (token, head) vector is normalised alone.
  const Tensor q = uniform_tensor({7, 3, 128}, DType::bf16, 10, -2.0f, 2.0f);
  const Tensor weight = uniform_tensor({128}, DType::bf16, 11, 0.5f, 1.5f);
  Tensor in_place = q.clone();
  rms_norm_(in_place, weight);
  const auto expected = reference_rms_norm(q.to_floats(), weight.to_floats(), 128, 1e-6, true);
  expect_near_all(in_place.to_floats(), expected, 1e-6, 2e-6 + rounding_error(DType::bf16),
                  "per head");
  EXPECT_EQ(rms_norm(q, weight).to_floats(), in_place.to_floats());
}

TEST(RmsNorm, RejectsWrongWeightLength) {
  const Tensor x = Tensor::zeros({2, 16}, DType::f32);
  const Tensor weight = Tensor::zeros({15}, DType::f32);
  expect_error_containing([&] { rms_norm(x, weight); }, {"rms_norm", "'weight'", "[16]", "[15]"});
}

TEST(RmsNorm, DryRunAllocatesLikeRealRun) {
  expect_dry_run_matches(
      [] {
        const Tensor weight = uniform_tensor({80}, DType::bf16, 2);
        return rms_norm(uniform_tensor({9, 16, 80}, DType::bf16, 1), weight);
      },
      "rms_norm");
}

// x [N, C, *spatial] -> x / max(||x||_2 over C, eps) * sqrt(C) * gamma[c].
std::vector<double> reference_channel_norm(const std::vector<float>& x,
                                           const std::vector<float>& gamma, std::int64_t batch,
                                           std::int64_t channels, std::int64_t plane, double eps) {
  std::vector<double> y(x.size());
  for (std::int64_t n = 0; n < batch; ++n) {
    for (std::int64_t p = 0; p < plane; ++p) {
      double squares = 0.0;
      for (std::int64_t c = 0; c < channels; ++c) {
        const double v = x[(n * channels + c) * plane + p];
        squares += v * v;
      }
      const double scale =
          std::sqrt(static_cast<double>(channels)) / std::max(std::sqrt(squares), eps);
      for (std::int64_t c = 0; c < channels; ++c) {
        const std::size_t i = static_cast<std::size_t>((n * channels + c) * plane + p);
        y[i] = x[i] * scale * gamma[c];
      }
    }
  }
  return y;
}

TEST(ChannelRmsNorm, OddSizesMatchReference) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (const Shape& shape :
         {Shape{1, 3, 5, 7}, Shape{2, 17, 9, 31}, Shape{1, 96, 16, 17}, Shape{2, 4, 1, 3, 5}}) {
      const std::int64_t channels = shape[1];
      const std::int64_t plane = shape_numel(shape) / (shape[0] * channels);
      const Tensor x = uniform_tensor(shape, dtype, 12, -2.0f, 2.0f);
      const Tensor gamma = uniform_tensor({channels, 1, 1}, DType::f32, 13, 0.5f, 1.5f);
      const Tensor y = channel_rms_norm(x, gamma);
      ASSERT_EQ(y.shape(), shape);
      const auto expected = reference_channel_norm(x.to_floats(), gamma.to_floats(), shape[0],
                                                   channels, plane, 1e-12);
      expect_near_all(y.to_floats(), expected, 1e-6, 4e-6 + rounding_error(dtype),
                      std::string(dtype_name(dtype)) + " " + shape_str(shape));
    }
  }
}

TEST(ChannelRmsNorm, ZeroVectorStaysZero) {
  // eps guards the division: an all-zero position gives zeros, not NaN.
  const Tensor x = Tensor::zeros({1, 4, 2, 2}, DType::f32);
  const Tensor gamma = Tensor::from_floats(std::vector<float>{1, 2, 3, 4}, {4});
  for (float value : channel_rms_norm(x, gamma).to_floats()) {
    EXPECT_EQ(value, 0.0f);
  }
}

TEST(ChannelRmsNorm, RejectsGammaOfWrongSize) {
  const Tensor x = Tensor::zeros({1, 4, 2, 2}, DType::f32);
  const Tensor gamma = Tensor::zeros({3}, DType::f32);
  expect_error_containing([&] { channel_rms_norm(x, gamma); },
                          {"channel_rms_norm", "gamma", "(4)", "f32[3]"});
}

TEST(ChannelRmsNorm, DryRunAllocatesLikeRealRun) {
  expect_dry_run_matches(
      [] {
        const Tensor gamma = uniform_tensor({96}, DType::bf16, 2);
        return channel_rms_norm(uniform_tensor({1, 96, 17, 19}, DType::bf16, 1), gamma);
      },
      "channel_rms_norm");
}

}  // namespace
}  // namespace ethereal::cpu
