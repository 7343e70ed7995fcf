#include "kernels/cpu/rope.h"

#include <gtest/gtest.h>

#include <cmath>
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

// Angle tables [S, D/2] with theta(s, k) = s * 10000^(-2k / D), as f32 cos and sin.
struct Tables {
  Tensor cos;
  Tensor sin;
};

Tables make_tables(std::int64_t tokens, std::int64_t dim, std::int64_t width) {
  std::vector<float> c(static_cast<std::size_t>(tokens * width));
  std::vector<float> s(c.size());
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::int64_t k = 0; k < width; ++k) {
      const std::int64_t pair = k % (dim / 2);  // a [S, D] table repeats its first half
      const double theta = (t - 3) * std::pow(10000.0, -2.0 * pair / static_cast<double>(dim));
      c[t * width + k] = static_cast<float>(std::cos(theta));
      s[t * width + k] = static_cast<float>(std::sin(theta));
    }
  }
  return {Tensor::from_floats(c, {tokens, width}), Tensor::from_floats(s, {tokens, width})};
}

// x [B, S, H, D] rotated in double; tables [S, width] shared by the batch.
std::vector<double> reference_rope(const std::vector<float>& x, const Tables& tables,
                                   std::int64_t batch, std::int64_t tokens, std::int64_t heads,
                                   std::int64_t dim, RopeStyle style) {
  const std::vector<float> c = tables.cos.to_floats();
  const std::vector<float> s = tables.sin.to_floats();
  const std::int64_t width = tables.cos.size(-1);
  std::vector<double> y(x.size());
  for (std::int64_t b = 0; b < batch; ++b) {
    for (std::int64_t t = 0; t < tokens; ++t) {
      for (std::int64_t h = 0; h < heads; ++h) {
        const std::size_t base = static_cast<std::size_t>(((b * tokens + t) * heads + h) * dim);
        for (std::int64_t k = 0; k < dim / 2; ++k) {
          const double ck = c[t * width + k];
          const double sk = s[t * width + k];
          const std::size_t i = style == RopeStyle::interleaved ? base + 2 * k : base + k;
          const std::size_t j = style == RopeStyle::interleaved ? i + 1 : i + dim / 2;
          y[i] = x[i] * ck - x[j] * sk;
          y[j] = x[i] * sk + x[j] * ck;
        }
      }
    }
  }
  return y;
}

TEST(Rope, BothStylesMatchReference) {
  for (RopeStyle style : {RopeStyle::interleaved, RopeStyle::rotate_half}) {
    for (DType dtype : {DType::f32, DType::bf16}) {
      for (std::int64_t dim : {2, 16, 80, 128}) {
        for (std::int64_t tokens : {1, 7, 33}) {
          const Tensor x = uniform_tensor({tokens, 3, dim}, dtype, 157, -2.0f, 2.0f);
          const Tables tables = make_tables(tokens, dim, dim / 2);
          const auto expected = reference_rope(x.to_floats(), tables, 1, tokens, 3, dim, style);
          const std::string label =
              std::string(style == RopeStyle::interleaved ? "pairs" : "half") + " " +
              std::string(dtype_name(dtype)) + " " + shape_str(x.shape());
          const Tensor y = apply_rope(x, tables.cos, tables.sin, style);
          expect_near_all(y.to_floats(), expected, 1e-6, 1e-6 + rounding_error(dtype), label);
          Tensor in_place = x.clone();
          apply_rope_(in_place, tables.cos, tables.sin, style);
          EXPECT_EQ(in_place.to_floats(), y.to_floats()) << label;
        }
      }
    }
  }
}

TEST(Rope, RotateHalfAcceptsFullWidthTables) {
  // Tables built as cat(freqs, freqs), the Qwen2.5-VL convention.
  const Tensor x = uniform_tensor({7, 2, 80}, DType::bf16, 163);
  const Tables half = make_tables(7, 80, 40);
  const Tables full = make_tables(7, 80, 80);
  EXPECT_EQ(apply_rope(x, full.cos, full.sin, RopeStyle::rotate_half).to_floats(),
            apply_rope(x, half.cos, half.sin, RopeStyle::rotate_half).to_floats());
}

TEST(Rope, BatchedAndStridedInput) {
  // q and k as views of a fused [B, S, 3, H, D] projection; rotating k leaves q and v alone.
  const Tensor qkv = uniform_tensor({2, 9, 3, 2, 16}, DType::f32, 167);
  Tensor k = qkv.select(2, 1);
  const std::vector<float> q_before = qkv.select(2, 0).to_floats();
  const std::vector<float> k_before = k.to_floats();
  const Tables tables = make_tables(9, 16, 8);
  apply_rope_(k, tables.cos, tables.sin, RopeStyle::interleaved);
  expect_near_all(k.to_floats(),
                  reference_rope(k_before, tables, 2, 9, 2, 16, RopeStyle::interleaved), 1e-6, 1e-6,
                  "strided k");
  EXPECT_EQ(qkv.select(2, 0).to_floats(), q_before);
}

TEST(Rope, PerSampleTables) {
  const Tensor x = uniform_tensor({2, 5, 1, 16}, DType::f32, 173);
  const Tables first = make_tables(5, 16, 8);
  const Tables second = make_tables(5, 16, 8);
  // Sample 1 uses negated angles: cos stays, sin flips.
  std::vector<float> cos_values = first.cos.to_floats();
  std::vector<float> sin_values = first.sin.to_floats();
  const std::vector<float> cos_second = second.cos.to_floats();
  std::vector<float> sin_second = second.sin.to_floats();
  for (float& value : sin_second) {
    value = -value;
  }
  cos_values.insert(cos_values.end(), cos_second.begin(), cos_second.end());
  sin_values.insert(sin_values.end(), sin_second.begin(), sin_second.end());
  const Tensor cos = Tensor::from_floats(cos_values, {2, 5, 8});
  const Tensor sin = Tensor::from_floats(sin_values, {2, 5, 8});
  const Tensor y = apply_rope(x, cos, sin, RopeStyle::interleaved);
  // Rotating sample 1 back by the positive angles restores it.
  Tensor restored = y.select(0, 1).clone();
  apply_rope_(restored, first.cos, first.sin, RopeStyle::interleaved);
  std::vector<double> original;
  for (float value : x.select(0, 1).to_floats()) {
    original.push_back(value);
  }
  expect_near_all(restored.to_floats(), original, 1e-6, 1e-6, "inverse rotation");
  const auto reference =
      reference_rope(x.select(0, 0).to_floats(), first, 1, 5, 1, 16, RopeStyle::interleaved);
  expect_near_all(y.select(0, 0).to_floats(), reference, 1e-6, 1e-6, "sample 0");
}

TEST(Rope, RejectsTableOfWrongShape) {
  Tensor x = Tensor::zeros({7, 2, 16}, DType::f32);
  const Tables tables = make_tables(6, 16, 8);
  expect_error_containing([&] { apply_rope_(x, tables.cos, tables.sin, RopeStyle::interleaved); },
                          {"apply_rope", "'cos'", "[7, 8]", "f32[6, 8]"});
}

TEST(Rope, RejectsOddHeadDimAndF32OnlyTables) {
  Tensor x = Tensor::zeros({7, 2, 15}, DType::f32);
  const Tables tables = make_tables(7, 16, 8);
  expect_error_containing([&] { apply_rope_(x, tables.cos, tables.sin, RopeStyle::rotate_half); },
                          {"head dim 15", "even"});
  Tensor y = Tensor::zeros({7, 2, 16}, DType::f32);
  const Tensor bf16_table = tables.cos.to(DType::bf16);
  expect_error_containing([&] { apply_rope_(y, bf16_table, tables.sin, RopeStyle::rotate_half); },
                          {"'cos'", "must be f32", "bf16[7, 8]"});
}

TEST(Rope, DryRunAllocatesLikeRealRun) {
  expect_dry_run_matches(
      [] {
        const Tables tables = make_tables(33, 128, 64);
        return apply_rope(uniform_tensor({33, 3, 128}, DType::bf16, 1), tables.cos, tables.sin,
                          RopeStyle::interleaved);
      },
      "apply_rope");
}

}  // namespace
}  // namespace ethereal::cpu
