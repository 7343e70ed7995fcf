// Applying LoRA updates: merging into f32 weights, run-time adapters in f32 and bf16, appending
// several files, and dry runs.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "lora/lora_test_support.h"
#include "models/lora/lora.h"
#include "models/lora/low_rank_adapter.h"
#include "runtime/allocator.h"
#include "support/errors.h"
#include "support/files.h"
#include "support/inputs.h"

namespace ethereal {
namespace {

using lora_testing::all_layouts;
using lora_testing::DeltaReference;
using lora_testing::KeyLayout;
using lora_testing::random_module;
using lora_testing::reference_delta;
using lora_testing::reference_update;
using lora_testing::UpdateReference;
using lora_testing::write_lora;
using test_support::error_message;
using test_support::TemporaryDirectory;
using test_support::uniform_tensor;

const KeyLayout kLightning = all_layouts().front();

// Merge tolerance: f32 products of rank terms and two f32 additions stay within 1e-6 of the
// magnitudes involved, |W| + sum over files and rank of |scale * up * down|.
constexpr double kMergeRelativeTolerance = 1e-6;

// f32 adapter tolerance relative to sum |x| |scale * up * down|: two f32 matrix products and one
// f32 addition.
constexpr double kF32AdapterTolerance = 1e-6;

// bf16 adapter tolerance relative to sum |x| |scale * up * down|: x, down and up are rounded to
// bf16 (2^-9 relative each), and so are the hidden [rows, rank] product and the update (2^-9
// each): five roundings, 5 * 2^-9 < 2^-6. The largest error seen in these tests is about 2^-8.
constexpr double kBf16AdapterTolerance = 1.0 / 64.0;

// Merges the modules of `set` into a copy of `weight` and compares with weight + the sum of
// the reference deltas.
void expect_merge_matches(const LoraSet& set, const std::string& module, const Tensor& weight,
                          const std::vector<DeltaReference>& deltas) {
  Tensor merged = weight.clone();
  set.merge_into(module, merged);

  const std::vector<float> original = weight.to_floats();
  const std::vector<float> result = merged.to_floats();
  for (std::size_t i = 0; i < result.size(); ++i) {
    double expected = original[i];
    double magnitude = std::abs(original[i]);
    for (const DeltaReference& delta : deltas) {
      expected += delta.value[i];
      magnitude += delta.absolute_sum[i];
    }
    ASSERT_NEAR(result[i], expected, kMergeRelativeTolerance * magnitude) << "element " << i;
  }
}

TEST(LoraMerge, EqualsF32ReferenceInEveryLayout) {
  TemporaryDirectory directory;
  // 300 output rows cross the merge chunk boundary (256 rows).
  const std::string module = "transformer_blocks.3.attn.to_out.0";
  for (const KeyLayout& layout : all_layouts()) {
    for (DType dtype : {DType::f32, DType::bf16}) {
      SCOPED_TRACE(layout.name + " " + std::string(dtype_name(dtype)));
      const auto path = directory / "lora.safetensors";
      const auto factors = random_module(module, 300, 40, 8, 7, 2.0f, dtype);
      write_lora(path, layout, {factors});
      const LoraSet set = LoraSet::read({{path, 0.7f}});
      const Tensor weight = uniform_tensor({300, 40}, DType::f32, 99);

      const double alpha = layout.has_alpha ? 2.0 : 8.0;
      expect_merge_matches(set, module, weight,
                           {reference_delta(factors.down, factors.up, 0.7 * alpha / 8.0)});
    }
  }
}

TEST(LoraMerge, TwoFilesAddBothUpdates) {
  TemporaryDirectory directory;
  const std::string module = "transformer_blocks.0.img_mlp.net.0.proj";
  const auto first = random_module(module, 24, 16, 4, 1, 8.0f);
  const auto second = random_module(module, 24, 16, 2, 3, 0.0f);
  write_lora(directory / "first.safetensors", kLightning, {first});
  write_lora(directory / "second.safetensors", all_layouts()[5], {second});
  const LoraSet set = LoraSet::read(
      {{directory / "first.safetensors", 0.5f}, {directory / "second.safetensors", -1.0f}});

  expect_merge_matches(set, module, uniform_tensor({24, 16}, DType::f32, 5),
                       {reference_delta(first.down, first.up, 0.5 * 8.0 / 4.0),
                        reference_delta(second.down, second.up, -1.0)});
}

TEST(LoraMerge, AbsentModuleLeavesWeight) {
  TemporaryDirectory directory;
  write_lora(directory / "lora.safetensors", kLightning,
             {random_module("transformer_blocks.0.attn.to_q", 4, 4, 2, 1, 1.0f)});
  const LoraSet set = LoraSet::read({{directory / "lora.safetensors", 1.0f}});
  const Tensor weight = uniform_tensor({4, 4}, DType::f32, 2);
  Tensor merged = weight.clone();

  set.merge_into("transformer_blocks.0.attn.to_k", merged);

  EXPECT_EQ(merged.to_floats(), weight.to_floats());
}

TEST(LoraMerge, WrongWeightShapeNamesModule) {
  TemporaryDirectory directory;
  const auto path = directory / "lora.safetensors";
  write_lora(path, kLightning, {random_module("transformer_blocks.0.attn.to_q", 4, 4, 2, 1, 1.0f)});
  const LoraSet set = LoraSet::read({{path, 1.0f}});
  Tensor weight = Tensor::zeros({4, 5}, DType::f32);

  const std::string message =
      error_message([&] { set.merge_into("transformer_blocks.0.attn.to_q", weight); });

  EXPECT_NE(message.find(path.string()), std::string::npos) << message;
  EXPECT_NE(message.find("\"transformer_blocks.0.attn.to_q\" changes a [4, 4] weight"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("[4, 5]"), std::string::npos) << message;
}

// Runs adapter.add_to on x [2, rows / 2, in] viewed through a transpose (not contiguous) and
// out [2, rows / 2, out] prefilled with `initial`, and compares with initial + the references.
void expect_add_to_matches(const LowRankAdapter& adapter, std::int64_t rows, DType x_dtype,
                           DType out_dtype, const std::vector<DeltaReference>& deltas,
                           double tolerance) {
  const std::int64_t in = adapter.in_features();
  const std::int64_t out = adapter.out_features();
  const std::int64_t half = rows / 2;
  // Stored as [2, in, half] and transposed, so x's last axis has stride `half`.
  const Tensor stored = uniform_tensor({2, in, half}, x_dtype, 17);
  const Tensor x = stored.transpose(1, 2);
  ASSERT_FALSE(x.is_contiguous());
  const std::vector<float> x_values = x.to_floats();  // logical order [2, half, in]
  const Tensor initial = uniform_tensor({2, half, out}, out_dtype, 23);
  Tensor result = initial.clone();

  adapter.add_to(x, result);

  const UpdateReference reference = reference_update(x_values, rows, deltas);
  const std::vector<float> before = initial.to_floats();
  const std::vector<float> after = result.to_floats();
  // A bf16 out adds one rounding of the sum, half a unit in the last place of its magnitude.
  const double out_rounding = out_dtype == DType::bf16 ? 1.0 / 256.0 : 0.0;
  for (std::size_t i = 0; i < after.size(); ++i) {
    const double expected = before[i] + reference.value[i];
    const double bound = tolerance * reference.absolute_sum[i] + out_rounding * std::abs(expected) +
                         1e-6 * std::abs(before[i]);
    ASSERT_NEAR(after[i], expected, bound) << "element " << i;
  }
}

TEST(LowRankAdapter, F32MatchesReference) {
  const Tensor down = uniform_tensor({4, 24}, DType::f32, 1);
  const Tensor up = uniform_tensor({20, 4}, DType::f32, 2);
  const LowRankAdapter adapter(down, up, 0.3f);
  EXPECT_EQ(adapter.rank(), 4);
  EXPECT_EQ(adapter.in_features(), 24);
  EXPECT_EQ(adapter.out_features(), 20);
  EXPECT_EQ(adapter.factor_dtype(), DType::f32);
  EXPECT_EQ(adapter.nbytes(), std::size_t{4 * (4 * 24 + 20 * 4)});

  // 2100 rows cross the chunk boundaries at 1024 and 2048.
  expect_add_to_matches(adapter, 2100, DType::f32, DType::f32, {reference_delta(down, up, 0.3)},
                        kF32AdapterTolerance);
}

TEST(LowRankAdapter, Bf16MatchesReference) {
  const Tensor down = uniform_tensor({4, 24}, DType::f32, 1);
  const Tensor up = uniform_tensor({20, 4}, DType::f32, 2);
  const LowRankAdapter adapter(down.to(DType::bf16), up.to(DType::bf16), 0.3f);
  EXPECT_EQ(adapter.factor_dtype(), DType::bf16);
  EXPECT_EQ(adapter.nbytes(), std::size_t{2 * (4 * 24 + 20 * 4)});
  const std::vector<DeltaReference> deltas = {reference_delta(down, up, 0.3)};

  for (DType x_dtype : {DType::f32, DType::bf16}) {
    for (DType out_dtype : {DType::f32, DType::bf16}) {
      SCOPED_TRACE(std::string(dtype_name(x_dtype)) + " x, " + std::string(dtype_name(out_dtype)) +
                   " out");
      expect_add_to_matches(adapter, 1100, x_dtype, out_dtype, deltas, kBf16AdapterTolerance);
    }
  }
}

TEST(LowRankAdapter, EmptyAdapterDoesNothing) {
  const LowRankAdapter adapter;
  EXPECT_TRUE(adapter.empty());
  EXPECT_EQ(adapter.rank(), 0);
  EXPECT_EQ(adapter.nbytes(), 0u);
  const Tensor x = uniform_tensor({3, 5}, DType::f32, 1);
  const Tensor out = uniform_tensor({3, 7}, DType::f32, 2);
  const std::vector<float> before = out.to_floats();

  adapter.add_to(x, out);

  EXPECT_EQ(out.to_floats(), before);
}

TEST(LowRankAdapter, RankMismatchIsRejected) {
  EXPECT_THROW(LowRankAdapter(uniform_tensor({4, 6}, DType::f32, 1),
                              uniform_tensor({5, 3}, DType::f32, 2), 1.0f),
               InvalidInputError);
  EXPECT_THROW(LowRankAdapter(uniform_tensor({4}, DType::f32, 1),
                              uniform_tensor({5, 4}, DType::f32, 2), 1.0f),
               InvalidInputError);
}

TEST(LowRankAdapter, AppendWithEqualScalesConcatenates) {
  const Tensor down_a = uniform_tensor({3, 16}, DType::f32, 1);
  const Tensor up_a = uniform_tensor({12, 3}, DType::f32, 2);
  const Tensor down_b = uniform_tensor({2, 16}, DType::f32, 3);
  const Tensor up_b = uniform_tensor({12, 2}, DType::f32, 4);
  LowRankAdapter adapter(down_a, up_a, 0.25f);

  adapter.append(LowRankAdapter(down_b, up_b, 0.25f));

  EXPECT_EQ(adapter.rank(), 5);
  EXPECT_EQ(adapter.scale(), 0.25f);
  expect_add_to_matches(adapter, 64, DType::f32, DType::f32,
                        {reference_delta(down_a, up_a, 0.25), reference_delta(down_b, up_b, 0.25)},
                        kF32AdapterTolerance);
}

TEST(LowRankAdapter, AppendWithDifferentScalesFoldsThem) {
  const Tensor down_a = uniform_tensor({3, 16}, DType::f32, 1);
  const Tensor up_a = uniform_tensor({12, 3}, DType::f32, 2);
  const Tensor down_b = uniform_tensor({2, 16}, DType::f32, 3);
  const Tensor up_b = uniform_tensor({12, 2}, DType::f32, 4);
  LowRankAdapter adapter(down_a.to(DType::bf16), up_a.to(DType::bf16), 0.125f);

  // The second adapter is f32 and is converted to the first one's bf16.
  adapter.append(LowRankAdapter(down_b, up_b, -0.6f));

  EXPECT_EQ(adapter.rank(), 5);
  EXPECT_EQ(adapter.scale(), 1.0f);
  EXPECT_EQ(adapter.factor_dtype(), DType::bf16);
  expect_add_to_matches(adapter, 64, DType::bf16, DType::f32,
                        {reference_delta(down_a, up_a, 0.125), reference_delta(down_b, up_b, -0.6)},
                        kBf16AdapterTolerance);
}

TEST(LowRankAdapter, AppendToEmptyCopies) {
  LowRankAdapter adapter;
  adapter.append(LowRankAdapter(uniform_tensor({2, 4}, DType::f32, 1),
                                uniform_tensor({3, 2}, DType::f32, 2), 0.5f));
  EXPECT_EQ(adapter.rank(), 2);
  EXPECT_EQ(adapter.scale(), 0.5f);
  adapter.append(LowRankAdapter());
  EXPECT_EQ(adapter.rank(), 2);
}

TEST(LowRankAdapter, AppendOfOtherLayerIsRejected) {
  LowRankAdapter adapter(uniform_tensor({2, 4}, DType::f32, 1),
                         uniform_tensor({3, 2}, DType::f32, 2), 0.5f);
  const std::string message = error_message([&] {
    adapter.append(LowRankAdapter(uniform_tensor({2, 5}, DType::f32, 1),
                                  uniform_tensor({3, 2}, DType::f32, 2), 0.5f));
  });
  EXPECT_NE(message.find("[3, 4] and [3, 5]"), std::string::npos) << message;
}

TEST(LoraAdapter, TwoFilesAppendInBf16) {
  TemporaryDirectory directory;
  const std::string module = "transformer_blocks.1.attn.add_k_proj";
  const auto first = random_module(module, 24, 32, 8, 1, 4.0f, DType::bf16);
  const auto second = random_module(module, 24, 32, 4, 3, 0.0f);
  write_lora(directory / "first.safetensors", kLightning, {first});
  write_lora(directory / "second.safetensors", all_layouts()[7], {second});
  const LoraSet set = LoraSet::read(
      {{directory / "first.safetensors", 1.0f}, {directory / "second.safetensors", 0.5f}});

  const LowRankAdapter adapter = set.adapter(module);

  EXPECT_EQ(adapter.factor_dtype(), DType::bf16);
  EXPECT_EQ(adapter.rank(), 12);
  EXPECT_EQ(adapter.in_features(), 32);
  EXPECT_EQ(adapter.out_features(), 24);
  expect_add_to_matches(adapter, 200, DType::bf16, DType::bf16,
                        {reference_delta(first.down, first.up, 4.0 / 8.0),
                         reference_delta(second.down, second.up, 0.5)},
                        kBf16AdapterTolerance);
  EXPECT_TRUE(set.adapter("transformer_blocks.1.attn.to_q").empty());
}

TEST(LoraAdapter, F32FactorsOnRequest) {
  TemporaryDirectory directory;
  const std::string module = "proj_out";
  const auto factors = random_module(module, 8, 12, 4, 1, 2.0f);
  write_lora(directory / "lora.safetensors", kLightning, {factors});
  const LoraSet set = LoraSet::read({{directory / "lora.safetensors", 1.0f}});

  const LowRankAdapter adapter = set.adapter(module, DType::f32);

  EXPECT_EQ(adapter.factor_dtype(), DType::f32);
  EXPECT_EQ(adapter.scale(), 0.5f);
  expect_add_to_matches(adapter, 10, DType::f32, DType::f32,
                        {reference_delta(factors.down, factors.up, 0.5)}, kF32AdapterTolerance);
}

// Allocator figures of one call under a fresh allocator.
struct CallFigures {
  std::int64_t allocation_count = 0;
  std::int64_t requested_peak = 0;
};

CallFigures figures_of(Allocator& allocator, const std::function<void()>& call) {
  allocator.reset_peaks();
  const AllocatorStats before = allocator.stats();
  call();
  const AllocatorStats after = allocator.stats();
  return {after.allocation_count - before.allocation_count,
          after.requested_bytes.peak - before.requested_bytes.current};
}

TEST(LowRankAdapterDryRun, AllocatesSameTemporaries) {
  const LowRankAdapter adapter(uniform_tensor({4, 24}, DType::bf16, 1),
                               uniform_tensor({20, 4}, DType::bf16, 2), 0.5f);
  const Shape x_shape = {2, 700, 24};
  const Shape out_shape = {2, 700, 20};

  CpuCachingAllocator real;
  CallFigures real_figures;
  {
    ScopedAllocator scope(real);
    const Tensor x = uniform_tensor(x_shape, DType::f32, 3);  // f32, so add_to converts it
    const Tensor out = Tensor::zeros(out_shape, DType::bf16);
    real_figures = figures_of(real, [&] { adapter.add_to(x, out); });
  }
  CpuCachingAllocator dry(CpuCachingAllocator::Options{.dry_run = true});
  CallFigures dry_figures;
  {
    ScopedAllocator scope(dry);
    const Tensor x = Tensor::empty(x_shape, DType::f32);
    const Tensor out = Tensor::empty(out_shape, DType::bf16);
    ASSERT_TRUE(x.is_dry());
    dry_figures = figures_of(dry, [&] { adapter.add_to(x, out); });
  }

  // The x copy plus two chunks of hidden and update products.
  EXPECT_GE(real_figures.allocation_count, 5);
  EXPECT_EQ(dry_figures.allocation_count, real_figures.allocation_count);
  EXPECT_EQ(dry_figures.requested_peak, real_figures.requested_peak);
}

TEST(LowRankAdapterDryRun, ComputesNothing) {
  const LowRankAdapter adapter(uniform_tensor({4, 24}, DType::f32, 1),
                               uniform_tensor({20, 4}, DType::f32, 2), 0.5f);
  const Tensor x = uniform_tensor({30, 24}, DType::f32, 3);
  const Tensor out = uniform_tensor({30, 20}, DType::f32, 4);
  const std::vector<float> before = out.to_floats();
  CpuCachingAllocator dry(CpuCachingAllocator::Options{.dry_run = true});
  {
    ScopedAllocator scope(dry);
    adapter.add_to(x, out);
  }
  EXPECT_EQ(out.to_floats(), before);
  EXPECT_GT(dry.stats().allocation_count, 0);
}

TEST(LoraMergeDryRun, AllocatesSameTemporariesAndLeavesWeight) {
  TemporaryDirectory directory;
  const std::string module = "img_in";
  write_lora(directory / "lora.safetensors", kLightning,
             {random_module(module, 300, 16, 4, 1, 4.0f)});
  const LoraSet set = LoraSet::read({{directory / "lora.safetensors", 1.0f}});
  Tensor weight = uniform_tensor({300, 16}, DType::f32, 2);
  const std::vector<float> before = weight.to_floats();

  CpuCachingAllocator real;
  CallFigures real_figures;
  {
    ScopedAllocator scope(real);
    Tensor copy = weight.clone();
    real_figures = figures_of(real, [&] { set.merge_into(module, copy); });
  }
  CpuCachingAllocator dry(CpuCachingAllocator::Options{.dry_run = true});
  CallFigures dry_figures;
  CallFigures dry_weight_figures;
  {
    ScopedAllocator scope(dry);
    dry_figures = figures_of(dry, [&] { set.merge_into(module, weight); });
    Tensor dry_weight = Tensor::empty({300, 16}, DType::f32);
    ASSERT_TRUE(dry_weight.is_dry());
    dry_weight_figures = figures_of(dry, [&] { set.merge_into(module, dry_weight); });
  }

  EXPECT_EQ(weight.to_floats(), before);
  // At least one update product per chunk of 256 output rows.
  EXPECT_GE(real_figures.allocation_count, 2);
  EXPECT_EQ(dry_figures.allocation_count, real_figures.allocation_count);
  EXPECT_EQ(dry_figures.requested_peak, real_figures.requested_peak);
  EXPECT_EQ(dry_weight_figures.allocation_count, real_figures.allocation_count);
}

}  // namespace
}  // namespace ethereal
