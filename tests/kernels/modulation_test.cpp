#include "kernels/cpu/modulation.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/cpu/norm.h"
#include "vector_kernels_test_support.h"

namespace ethereal::cpu {
namespace {

using vector_testing::expect_dry_run_matches;
using vector_testing::expect_error_containing;
using vector_testing::expect_near_all;
using vector_testing::rounding_error;
using vector_testing::uniform_tensor;

// Per-token parameter rows: rows of `first` for tokens < split, of `second` after.
// A parameter tensor is [D] (shared) or [B, D].
double param_at(const std::vector<float>& values, const Tensor& t, std::int64_t sample,
                std::int64_t channel) {
  const std::int64_t channels = t.size(-1);
  const std::int64_t row = t.dim() == 2 && t.size(0) > 1 ? sample : 0;
  return values[static_cast<std::size_t>(row * channels + channel)];
}

// y = f(x, scale, shift) for x [B, S, D] with parameter sets chosen by token.
std::vector<double> reference_modulate(const Tensor& x3, const ChannelParam& scale,
                                       const ChannelParam& shift, bool normalise) {
  const std::int64_t batch = x3.size(0);
  const std::int64_t tokens = x3.size(1);
  const std::int64_t channels = x3.size(2);
  const std::vector<float> x = x3.to_floats();
  const std::vector<float> scale_first = scale.first.to_floats();
  const std::vector<float> shift_first = shift.first.to_floats();
  const std::vector<float> scale_second =
      scale.second.defined() ? scale.second.to_floats() : std::vector<float>{};
  const std::vector<float> shift_second =
      shift.second.defined() ? shift.second.to_floats() : std::vector<float>{};
  std::vector<double> y(x.size());
  for (std::int64_t b = 0; b < batch; ++b) {
    for (std::int64_t s = 0; s < tokens; ++s) {
      const bool second = scale.second.defined() && s >= scale.split;
      const float* row = x.data() + (b * tokens + s) * channels;
      double mean = 0.0;
      double rstd = 1.0;
      if (normalise) {
        for (std::int64_t c = 0; c < channels; ++c) {
          mean += row[c];
        }
        mean /= static_cast<double>(channels);
        double variance = 0.0;
        for (std::int64_t c = 0; c < channels; ++c) {
          variance += (row[c] - mean) * (row[c] - mean);
        }
        rstd = 1.0 / std::sqrt(variance / static_cast<double>(channels) + 1e-6);
      }
      for (std::int64_t c = 0; c < channels; ++c) {
        const double sc = second ? param_at(scale_second, scale.second, b, c)
                                 : param_at(scale_first, scale.first, b, c);
        const double sh = second ? param_at(shift_second, shift.second, b, c)
                                 : param_at(shift_first, shift.first, b, c);
        y[(b * tokens + s) * channels + c] = (row[c] - mean) * rstd * (1.0 + sc) + sh;
      }
    }
  }
  return y;
}

TEST(Modulate, SharedVectorsOnTwoDimensionalInput) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (std::int64_t channels : {1, 17, 130}) {
      const Tensor x = uniform_tensor({33, channels}, dtype, 71, -2.0f, 2.0f);
      const Tensor scale = uniform_tensor({channels}, dtype, 73);
      const Tensor shift = uniform_tensor({channels}, dtype, 79);
      const auto expected = reference_modulate(x.unsqueeze(0), scale, shift, false);
      const std::string label = std::string(dtype_name(dtype)) + " D=" + std::to_string(channels);
      expect_near_all(modulate(x, scale, shift).to_floats(), expected, 1e-6,
                      1e-6 + rounding_error(dtype), label);
      Tensor in_place = x.clone();
      modulate_(in_place, scale, shift);
      EXPECT_EQ(in_place.to_floats(), modulate(x, scale, shift).to_floats()) << label;
    }
  }
}

TEST(Modulate, PerSampleRowsFromChunkedLinearOutput) {
  // The [B, 6D] output of a modulation linear: shift, scale, gate = chunks 0, 1, 2 (strided).
  const std::int64_t batch = 2, tokens = 7, channels = 24;
  const Tensor mod = uniform_tensor({batch, 6 * channels}, DType::bf16, 83);
  const Tensor shift = mod.narrow(1, 0, channels);
  const Tensor scale = mod.narrow(1, channels, channels);
  ASSERT_FALSE(shift.is_contiguous());
  const Tensor x = uniform_tensor({batch, tokens, channels}, DType::bf16, 89, -2.0f, 2.0f);
  expect_near_all(modulate(x, scale, shift).to_floats(), reference_modulate(x, scale, shift, false),
                  1e-6, 1e-6 + rounding_error(DType::bf16), "per sample");
}

TEST(Modulate, SplitSelectsSecondSetForLaterTokens) {
  // zero_cond_t: tokens [0, 5) are the target image, tokens [5, 13) reference images.
  const Tensor x = uniform_tensor({2, 13, 40}, DType::f32, 97, -2.0f, 2.0f);
  const ChannelParam scale(uniform_tensor({2, 40}, DType::f32, 101),
                           uniform_tensor({2, 40}, DType::f32, 103), 5);
  const ChannelParam shift(uniform_tensor({2, 40}, DType::f32, 107),
                           uniform_tensor({2, 40}, DType::f32, 109), 5);
  expect_near_all(modulate(x, scale, shift).to_floats(), reference_modulate(x, scale, shift, false),
                  1e-6, 1e-6, "split");
  expect_near_all(layer_norm_modulate(x, scale, shift).to_floats(),
                  reference_modulate(x, scale, shift, true), 1e-5, 1e-5, "split with norm");
}

TEST(LayerNormModulate, MatchesLayerNormThenModulate) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Tensor x = uniform_tensor({1, 33, 3072}, dtype, 113, -3.0f, 5.0f);
    const Tensor scale = uniform_tensor({3072}, dtype, 127);
    const Tensor shift = uniform_tensor({3072}, dtype, 131);
    const auto expected = reference_modulate(x, scale, shift, true);
    expect_near_all(layer_norm_modulate(x, scale, shift).to_floats(), expected, 2e-5,
                    2e-5 + rounding_error(dtype), std::string(dtype_name(dtype)));
  }
}

TEST(AddGated, SharedAndSplitGates) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Tensor x = uniform_tensor({2, 9, 33}, dtype, 137);
    const Tensor y = uniform_tensor({2, 9, 33}, DType::f32, 139);
    const Tensor gate_first = uniform_tensor({33}, dtype, 149);
    const Tensor gate_second = uniform_tensor({33}, dtype, 151);
    for (std::int64_t split : {0, 4, 9}) {
      Tensor result = x.clone();
      add_gated_(result, y, ChannelParam(gate_first, gate_second, split));
      const std::vector<float> xv = x.to_floats();
      const std::vector<float> yv = y.to_floats();
      const std::vector<float> g0 = gate_first.to_floats();
      const std::vector<float> g1 = gate_second.to_floats();
      std::vector<double> expected(xv.size());
      for (std::size_t i = 0; i < xv.size(); ++i) {
        const std::int64_t token = static_cast<std::int64_t>(i / 33) % 9;
        const double gate = token < split ? g0[i % 33] : g1[i % 33];
        expected[i] = xv[i] + gate * yv[i];
      }
      expect_near_all(result.to_floats(), expected, 1e-6, 1e-6 + rounding_error(dtype),
                      std::string(dtype_name(dtype)) + " split " + std::to_string(split));
    }
  }
}

TEST(Modulation, RejectsParameterOfWrongLength) {
  const Tensor x = Tensor::zeros({4, 16}, DType::f32);
  const Tensor good = Tensor::zeros({16}, DType::f32);
  const Tensor bad = Tensor::zeros({15}, DType::f32);
  expect_error_containing([&] { modulate(x, good, bad); },
                          {"modulate", "'shift'", "[16]", "f32[15]"});
}

TEST(Modulation, RejectsMixedParameterDtypes) {
  const Tensor x = Tensor::zeros({4, 16}, DType::f32);
  const Tensor scale = Tensor::zeros({16}, DType::f32);
  const Tensor shift = Tensor::zeros({16}, DType::bf16);
  expect_error_containing([&] { modulate(x, scale, shift); }, {"'shift'", "bf16[16]", "one dtype"});
}

TEST(Modulation, RejectsSplitOutsideTokens) {
  Tensor x = Tensor::zeros({4, 16}, DType::f32);
  const Tensor y = Tensor::zeros({4, 16}, DType::f32);
  const Tensor gate = Tensor::zeros({16}, DType::f32);
  expect_error_containing([&] { add_gated_(x, y, ChannelParam(gate, gate, 5)); },
                          {"split 5", "4 tokens"});
}

TEST(Modulation, DryRunAllocatesLikeRealRun) {
  expect_dry_run_matches(
      [] {
        const Tensor x = uniform_tensor({2, 9, 48}, DType::bf16, 1);
        const Tensor mod = uniform_tensor({2, 96}, DType::bf16, 2);
        return layer_norm_modulate(x, mod.narrow(1, 0, 48), mod.narrow(1, 48, 48));
      },
      "layer_norm_modulate");
}

}  // namespace
}  // namespace ethereal::cpu
