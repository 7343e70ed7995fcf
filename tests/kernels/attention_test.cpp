#include "kernels/cpu/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "runtime/allocator.h"
#include "runtime/parallel.h"
#include "vector_kernels_test_support.h"

namespace ethereal::cpu {
namespace {

using vector_testing::expect_dry_run_matches;
using vector_testing::expect_error_containing;
using vector_testing::expect_near_all;
using vector_testing::uniform_tensor;

// Sizes and masking of one attention problem; q [Sq, H, D], k and v [Sk, Hkv, D].
struct Case {
  std::int64_t queries = 1;
  std::int64_t keys = 1;
  std::int64_t heads = 1;
  std::int64_t kv_heads = 1;
  std::int64_t dim = 16;
  bool causal = false;
  std::vector<std::uint8_t> mask;      // empty: no key mask
  std::vector<std::int64_t> segments;  // empty: one sequence
  float scale = 0.0f;

  std::string label() const {
    return fmt::format("Sq={} Sk={} H={} Hkv={} D={} causal={} mask={} segments={}", queries, keys,
                       heads, kv_heads, dim, causal, !mask.empty(), segments.size());
  }
};

// Plain attention in double precision over the values the tensors hold.
std::vector<double> reference_attention(const std::vector<float>& q, const std::vector<float>& k,
                                        const std::vector<float>& v, const Case& c) {
  const double scale = c.scale > 0.0f ? c.scale : 1.0 / std::sqrt(static_cast<double>(c.dim));
  const std::int64_t group = c.heads / c.kv_heads;
  std::vector<double> out(static_cast<std::size_t>(c.queries * c.heads * c.dim), 0.0);
  for (std::int64_t h = 0; h < c.heads; ++h) {
    const std::int64_t kv = h / group;
    for (std::int64_t i = 0; i < c.queries; ++i) {
      std::int64_t low = 0;
      std::int64_t high = c.keys;
      for (std::size_t s = 0; s < c.segments.size(); ++s) {
        if (c.segments[s] <= i) {
          low = c.segments[s];
          high = s + 1 < c.segments.size() ? c.segments[s + 1] : c.keys;
        }
      }
      if (c.causal) {
        high = std::min(high, i + c.keys - c.queries + 1);
      }
      std::vector<double> scores;
      std::vector<std::int64_t> used;
      for (std::int64_t j = low; j < high; ++j) {
        if (!c.mask.empty() && c.mask[j] == 0) {
          continue;
        }
        double dot = 0.0;
        for (std::int64_t d = 0; d < c.dim; ++d) {
          dot += static_cast<double>(q[(i * c.heads + h) * c.dim + d]) *
                 k[(j * c.kv_heads + kv) * c.dim + d];
        }
        scores.push_back(dot * scale);
        used.push_back(j);
      }
      if (scores.empty()) {
        continue;
      }
      const double max = *std::max_element(scores.begin(), scores.end());
      double sum = 0.0;
      for (double& s : scores) {
        s = std::exp(s - max);
        sum += s;
      }
      for (std::size_t n = 0; n < used.size(); ++n) {
        for (std::int64_t d = 0; d < c.dim; ++d) {
          out[(i * c.heads + h) * c.dim + d] +=
              scores[n] / sum * v[(used[n] * c.kv_heads + kv) * c.dim + d];
        }
      }
    }
  }
  return out;
}

Case make_case(std::int64_t queries, std::int64_t keys, std::int64_t heads, std::int64_t kv_heads,
               std::int64_t dim) {
  Case c;
  c.queries = queries;
  c.keys = keys;
  c.heads = heads;
  c.kv_heads = kv_heads;
  c.dim = dim;
  return c;
}
Case causal(Case c) {
  c.causal = true;
  return c;
}
Case masked(Case c, std::vector<std::uint8_t> mask) {
  c.mask = std::move(mask);
  return c;
}
Case segmented(Case c, std::vector<std::int64_t> segments) {
  c.segments = std::move(segments);
  return c;
}
Case scaled(Case c, float scale) {
  c.scale = scale;
  return c;
}

AttentionOptions options_for(const Case& c) {
  AttentionOptions options;
  options.causal = c.causal;
  options.segment_starts = c.segments;
  options.scale = c.scale;
  if (!c.mask.empty()) {
    std::vector<float> mask(c.mask.begin(), c.mask.end());
    options.key_mask = Tensor::from_floats(mask, {c.keys}, DType::uint8);
  }
  return options;
}

// Tolerances: f32 products leave only accumulation error; bf16 products round P to bf16
// (relative 2^-9 per probability, so at most 2^-9 max|v| in the output), and a bf16 output
// rounds once more.
struct Tolerance {
  double absolute;
  double relative;
};
constexpr Tolerance kF32Products{2e-5, 1e-4};
constexpr Tolerance kBf16Products{6e-3, 8e-3};

void check_case(const Case& c, DType dtype, AttentionPrecision precision, Tolerance tolerance,
                float value_range = 1.0f, std::uint32_t seed = 1) {
  const Tensor q =
      uniform_tensor({c.queries, c.heads, c.dim}, dtype, seed, -value_range, value_range);
  const Tensor k =
      uniform_tensor({c.keys, c.kv_heads, c.dim}, dtype, seed + 1, -value_range, value_range);
  const Tensor v = uniform_tensor({c.keys, c.kv_heads, c.dim}, dtype, seed + 2);
  AttentionOptions options = options_for(c);
  options.precision = precision;
  const Tensor out = attention(q, k, v, options);
  ASSERT_EQ(out.shape(), q.shape());
  ASSERT_EQ(out.dtype(), dtype);
  const auto expected = reference_attention(q.to_floats(), k.to_floats(), v.to_floats(), c);
  expect_near_all(out.to_floats(), expected, tolerance.absolute, tolerance.relative,
                  c.label() + " " + std::string(dtype_name(dtype)));
}

TEST(Attention, F32OddSizesMatchReference) {
  for (std::int64_t s : {1, 7, 33, 130}) {
    for (std::int64_t d : {16, 80, 128}) {
      for (std::int64_t h : {1, 3}) {
        check_case(make_case(s, s, h, h, d), DType::f32, AttentionPrecision::automatic,
                   kF32Products);
      }
    }
  }
}

TEST(Attention, Bf16OddSizesMatchReference) {
  for (std::int64_t s : {1, 7, 33, 130}) {
    for (std::int64_t d : {16, 80, 128}) {
      for (std::int64_t h : {1, 3}) {
        check_case(make_case(s, s, h, h, d), DType::bf16, AttentionPrecision::automatic,
                   kBf16Products);
      }
    }
  }
}

TEST(Attention, HeadDimNotMultipleOfSixteen) {
  check_case(make_case(9, 20, 2, 2, 7), DType::f32, AttentionPrecision::f32, kF32Products);
  check_case(make_case(9, 20, 2, 2, 36), DType::bf16, AttentionPrecision::automatic, kBf16Products);
}

TEST(Attention, GroupedQueryHeads) {
  check_case(make_case(33, 33, 7, 1, 16), DType::f32, AttentionPrecision::automatic, kF32Products);
  check_case(make_case(17, 17, 28, 4, 16), DType::bf16, AttentionPrecision::automatic,
             kBf16Products);
}

TEST(Attention, SeveralKeyBlocksUpdateRunningMaximum) {
  // Three 512-key blocks, with larger values so that later blocks raise the maximum.
  check_case(make_case(70, 1100, 2, 1, 80), DType::f32, AttentionPrecision::automatic, kF32Products,
             2.0f);
  check_case(make_case(70, 1100, 2, 1, 80), DType::bf16, AttentionPrecision::automatic,
             kBf16Products, 2.0f);
}

TEST(Attention, LargeScoresStayFinite) {
  // Scores reach a few hundred, so exp without subtracting the maximum would overflow.
  check_case(scaled(make_case(5, 40, 1, 1, 16), 1.0f), DType::f32, AttentionPrecision::automatic,
             kF32Products, 6.0f);
}

TEST(Attention, KeyMaskSkipsKeys) {
  std::vector<std::uint8_t> mask(33, 1);
  for (std::size_t j = 0; j < mask.size(); j += 3) {
    mask[j] = 0;
  }
  mask[32] = 0;
  check_case(masked(make_case(7, 33, 3, 3, 16), mask), DType::f32, AttentionPrecision::automatic,
             kF32Products);
  check_case(masked(make_case(7, 33, 3, 3, 16), mask), DType::bf16, AttentionPrecision::automatic,
             kBf16Products);
}

TEST(Attention, FullyMaskedRowsGiveZeros) {
  const Case c = masked(make_case(4, 9, 1, 1, 16), std::vector<std::uint8_t>(9, 0));
  const Tensor q = uniform_tensor({4, 1, 16}, DType::f32, 3);
  const Tensor k = uniform_tensor({9, 1, 16}, DType::f32, 4);
  const Tensor out = attention(q, k, k, options_for(c));
  for (float value : out.to_floats()) {
    EXPECT_EQ(value, 0.0f);
  }
}

TEST(Attention, CausalSquare) {
  check_case(causal(make_case(130, 130, 3, 3, 16)), DType::f32, AttentionPrecision::automatic,
             kF32Products);
  check_case(causal(make_case(700, 700, 1, 1, 80)), DType::bf16, AttentionPrecision::automatic,
             kBf16Products);
}

TEST(Attention, CausalAlignsAtEndOfKeys) {
  // Fewer queries than keys: query i attends to keys up to i + (Sk - Sq), as with a key cache.
  check_case(causal(make_case(7, 33, 3, 1, 16)), DType::f32, AttentionPrecision::automatic,
             kF32Products);
  // More queries than keys: the first Sq - Sk rows have no key and are zero.
  check_case(causal(make_case(33, 7, 1, 1, 16)), DType::f32, AttentionPrecision::automatic,
             kF32Products);
}

TEST(Attention, SegmentsAttendWithinThemselves) {
  const std::vector<std::int64_t> segments{0, 5, 64, 100, 129};
  check_case(segmented(make_case(130, 130, 3, 3, 80), segments), DType::f32,
             AttentionPrecision::automatic, kF32Products);
  check_case(segmented(make_case(130, 130, 3, 3, 80), segments), DType::bf16,
             AttentionPrecision::automatic, kBf16Products);
  check_case(segmented(causal(make_case(130, 130, 1, 1, 16)), segments), DType::f32,
             AttentionPrecision::automatic, kF32Products);
}

TEST(Attention, F32PrecisionForBf16Inputs) {
  // f32 products leave only the output rounding: half a bf16 unit.
  check_case(make_case(33, 33, 3, 3, 80), DType::bf16, AttentionPrecision::f32,
             {1e-5, std::ldexp(1.0, -8)});
}

TEST(Attention, Bf16PrecisionForF32Inputs) {
  // q, k and v are rounded to bf16 as well as P: scores of up to sqrt(D) / 3 in magnitude
  // change by about 2^-8 relative.
  check_case(make_case(33, 33, 3, 3, 80), DType::f32, AttentionPrecision::bf16, {1.5e-2, 1e-2});
}

TEST(Attention, StridedViewsOfFusedProjection) {
  const Case c = make_case(33, 33, 3, 3, 80);
  const Tensor qkv = uniform_tensor({33, 3, 3, 80}, DType::bf16, 11);
  const Tensor q = qkv.select(1, 0);
  const Tensor k = qkv.select(1, 1);
  const Tensor v = qkv.select(1, 2);
  ASSERT_FALSE(q.is_contiguous());
  const Tensor out = attention(q, k, v);
  const auto expected = reference_attention(q.to_floats(), k.to_floats(), v.to_floats(), c);
  expect_near_all(out.to_floats(), expected, kBf16Products.absolute, kBf16Products.relative,
                  "strided");
  EXPECT_TRUE(out.is_contiguous());
}

TEST(Attention, BatchedInputsWithPerSampleMask) {
  const Case first = masked(make_case(7, 12, 2, 1, 16), {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1});
  Case second = first;
  second.mask = {1, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0};
  const Tensor q = uniform_tensor({2, 7, 2, 16}, DType::f32, 21);
  const Tensor k = uniform_tensor({2, 12, 1, 16}, DType::f32, 22);
  const Tensor v = uniform_tensor({2, 12, 1, 16}, DType::f32, 23);
  std::vector<float> mask(first.mask.begin(), first.mask.end());
  mask.insert(mask.end(), second.mask.begin(), second.mask.end());
  AttentionOptions options;
  options.key_mask = Tensor::from_floats(mask, {2, 12}, DType::uint8);
  const Tensor out = attention(q, k, v, options);
  ASSERT_EQ(out.shape(), q.shape());
  const Case cases[] = {first, second};
  for (std::int64_t b = 0; b < 2; ++b) {
    const auto expected =
        reference_attention(q.select(0, b).to_floats(), k.select(0, b).to_floats(),
                            v.select(0, b).to_floats(), cases[b]);
    expect_near_all(out.select(0, b).to_floats(), expected, kF32Products.absolute,
                    kF32Products.relative, fmt::format("batch {}", b));
  }
}

TEST(Attention, QueryTileSizeDoesNotChangeResults) {
  const Tensor q = uniform_tensor({130, 3, 80}, DType::bf16, 31);
  const Tensor k = uniform_tensor({130, 3, 80}, DType::bf16, 32);
  const Tensor v = uniform_tensor({130, 3, 80}, DType::bf16, 33);
  AttentionOptions small;
  small.max_query_tile = 5;
  small.causal = true;
  AttentionOptions large;
  large.max_query_tile = 130;
  large.causal = true;
  EXPECT_EQ(attention(q, k, v, small).to_floats(), attention(q, k, v, large).to_floats());
  EXPECT_LT(attention_workspace_bytes(q.shape(), k.shape(), DType::bf16, small),
            attention_workspace_bytes(q.shape(), k.shape(), DType::bf16, large));
}

TEST(Attention, WorkspaceBytesMatchAllocatorRequests) {
  const Tensor q = uniform_tensor({130, 3, 80}, DType::bf16, 41);
  const Tensor k = uniform_tensor({70, 1, 80}, DType::bf16, 42);
  AttentionOptions options;
  options.key_mask = Tensor::from_floats(std::vector<float>(70, 1.0f), {70}, DType::uint8);
  CpuCachingAllocator allocator;
  std::size_t output_bytes = 0;
  {
    ScopedAllocator scope(allocator);
    output_bytes = attention(q, k, k, options).nbytes();
  }
  const std::size_t workspace =
      attention_workspace_bytes(q.shape(), k.shape(), DType::bf16, options);
  EXPECT_GT(workspace, 0u);
  EXPECT_EQ(static_cast<std::size_t>(allocator.stats().requested_bytes.peak),
            output_bytes + workspace);
  EXPECT_EQ(allocator.stats().allocated_bytes.current, 0);
}

TEST(Attention, DryRunAllocatesLikeRealRun) {
  expect_dry_run_matches(
      [] {
        const Tensor q = uniform_tensor({130, 7, 80}, DType::bf16, 51);
        const Tensor k = uniform_tensor({130, 1, 80}, DType::bf16, 52);
        AttentionOptions options;
        options.causal = true;
        options.key_mask = Tensor::from_floats(std::vector<float>(130, 1.0f), {130}, DType::uint8);
        return attention(q, k, k, options);
      },
      "attention bf16 causal mask");
  expect_dry_run_matches(
      [] {
        const Tensor q = uniform_tensor({2, 33, 3, 16}, DType::f32, 53);
        AttentionOptions options;
        options.segment_starts = {0, 10};
        return attention(q, q, q, options);
      },
      "attention f32 batched segments");
}

TEST(Attention, RejectsHeadsNotMultipleOfKeyHeads) {
  const Tensor q = Tensor::zeros({4, 6, 16}, DType::f32);
  const Tensor k = Tensor::zeros({4, 4, 16}, DType::f32);
  expect_error_containing([&] { attention(q, k, k); }, {"attention", "6 heads", "4 key/value"});
}

TEST(Attention, RejectsMixedDtypes) {
  const Tensor q = Tensor::zeros({4, 2, 16}, DType::f32);
  const Tensor k = Tensor::zeros({4, 2, 16}, DType::bf16);
  expect_error_containing([&] { attention(q, k, k); }, {"same dtype", "bf16[4, 2, 16]"});
}

TEST(Attention, RejectsBadSegmentStarts) {
  const Tensor q = Tensor::zeros({8, 1, 16}, DType::f32);
  AttentionOptions options;
  options.segment_starts = {1, 4};
  expect_error_containing([&] { attention(q, q, q, options); }, {"segment_starts", "entry 0"});
  options.segment_starts = {0, 4, 4};
  expect_error_containing([&] { attention(q, q, q, options); }, {"segment_starts", "entry 2"});
  const Tensor k = Tensor::zeros({9, 1, 16}, DType::f32);
  options.segment_starts = {0, 4};
  expect_error_containing([&] { attention(q, k, k, options); }, {"Sq == Sk", "Sk 9"});
}

TEST(Attention, RejectsBadKeyMask) {
  const Tensor q = Tensor::zeros({8, 1, 16}, DType::f32);
  AttentionOptions options;
  options.key_mask = Tensor::zeros({8}, DType::f32);
  expect_error_containing([&] { attention(q, q, q, options); }, {"key_mask", "uint8", "f32[8]"});
  options.key_mask = Tensor::zeros({7}, DType::uint8);
  expect_error_containing([&] { attention(q, q, q, options); }, {"key_mask", "uint8[7]"});
}

TEST(Attention, RejectsNegativeScaleAndUnitStrideViolation) {
  const Tensor q = Tensor::zeros({8, 1, 16}, DType::f32);
  AttentionOptions options;
  options.scale = -1.0f;
  expect_error_containing([&] { attention(q, q, q, options); }, {"scale", "-1"});
  const Tensor every_other = Tensor::zeros({8, 1, 16, 2}, DType::f32).select(3, 0);
  expect_error_containing([&] { attention(every_other, every_other, every_other); },
                          {"'q'", "stride 1 on its last axis"});
}

}  // namespace
}  // namespace ethereal::cpu
