#include "kernels/cpu/linear.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include "dense_test_support.h"
#include "runtime/error.h"
#include "support/reference_linear.h"

namespace ethereal::cpu {
namespace {

using testing::expect_matches;
using testing::Expected;
using ::testing::HasSubstr;
using testing::rounded_to;
using testing::uniform_values;

// y[r, n] = sum_k x[r, k] w[n, k] + b[n] in double, from the values the kernel computes with.
std::vector<Expected> reference_linear(const std::vector<float>& x, const std::vector<float>& w,
                                       const std::vector<float>& bias, std::int64_t rows,
                                       std::int64_t k, std::int64_t n) {
  const test_support::LinearReference reference =
      test_support::reference_linear(x, w, bias, rows, k, n);
  std::vector<Expected> y(reference.value.size());
  for (std::size_t i = 0; i < y.size(); ++i) {
    y[i] = {.value = reference.value[i], .absolute_sum = reference.absolute_sum[i], .terms = k + 1};
  }
  return y;
}

struct LinearCase {
  std::int64_t rows, k, n;
  bool with_bias;
};

const LinearCase kCases[] = {{1, 1, 1, false},     {3, 17, 33, true},   {17, 65, 3, false},
                             {33, 127, 130, true}, {130, 33, 65, true}, {1, 130, 127, true},
                             {65, 3, 17, false},   {127, 64, 128, true}};

// Runs one case with the given dtypes and checks it against the reference. The reference
// uses the inputs as the kernel computes with them: rounded to the packed dtype.
void check_case(const LinearCase& c, DType x_dtype, DType weight_dtype, DType out_dtype,
                std::uint32_t seed) {
  const auto x_values = rounded_to(uniform_values(c.rows * c.k, seed), x_dtype);
  const auto w_values = rounded_to(uniform_values(c.n * c.k, seed + 1), weight_dtype);
  const auto b_values =
      c.with_bias ? rounded_to(uniform_values(c.n, seed + 2), weight_dtype) : std::vector<float>();
  const Tensor x = Tensor::from_floats(x_values, {c.rows, c.k}, x_dtype);
  const Tensor w = Tensor::from_floats(w_values, {c.n, c.k}, weight_dtype);
  const Tensor b = c.with_bias ? Tensor::from_floats(b_values, {c.n}, weight_dtype) : Tensor();

  const PackedLinear linear(w, b);
  const Tensor y = linear.forward(x, out_dtype);
  ASSERT_EQ(y.shape(), (Shape{c.rows, c.n}));
  ASSERT_EQ(y.dtype(), out_dtype);
  const auto expected =
      reference_linear(rounded_to(x_values, weight_dtype), w_values, b_values, c.rows, c.k, c.n);
  expect_matches(
      y, expected,
      fmt::format("rows {} k {} n {} bias {} x {} w {} out {}", c.rows, c.k, c.n, c.with_bias,
                  dtype_name(x_dtype), dtype_name(weight_dtype), dtype_name(out_dtype)));
}

TEST(Linear, F32MatchesReference) {
  std::uint32_t seed = 10;
  for (const LinearCase& c : kCases) {
    check_case(c, DType::f32, DType::f32, DType::f32, seed += 3);
  }
}

TEST(Linear, Bf16MatchesReference) {
  std::uint32_t seed = 100;
  for (const LinearCase& c : kCases) {
    check_case(c, DType::bf16, DType::bf16, DType::bf16, seed += 3);
  }
}

TEST(Linear, Bf16WeightsWithF32InputRoundInput) {
  // The f32 input is rounded to bf16 before the product, so the reference built from the
  // rounded input must match to f32 accumulation accuracy.
  std::uint32_t seed = 200;
  for (const LinearCase& c : kCases) {
    check_case(c, DType::f32, DType::bf16, DType::f32, seed += 3);
  }
}

TEST(Linear, F32WeightsWithBf16Input) {
  std::uint32_t seed = 300;
  for (const LinearCase& c : kCases) {
    check_case(c, DType::bf16, DType::f32, DType::bf16, seed += 3);
    check_case(c, DType::bf16, DType::f32, DType::f32, seed += 3);
  }
}

TEST(Linear, F32ComputeWritesBf16Output) {
  std::uint32_t seed = 350;
  for (const LinearCase& c : kCases) {
    check_case(c, DType::f32, DType::f32, DType::bf16, seed += 3);
  }
}

TEST(Linear, Bf16ComputeWritesF32Output) {
  check_case({33, 127, 130, true}, DType::bf16, DType::bf16, DType::f32, 400);
}

TEST(Linear, PackedDtypeConvertsF32Weights) {
  const std::int64_t rows = 9, k = 33, n = 17;
  const auto x_values = uniform_values(rows * k, 500);
  const auto w_values = uniform_values(n * k, 501);
  const auto b_values = uniform_values(n, 502);
  const PackedLinear linear(Tensor::from_floats(w_values, {n, k}),
                            Tensor::from_floats(b_values, {n}), DType::bf16);
  EXPECT_EQ(linear.packed_dtype(), DType::bf16);
  const Tensor y = linear.forward(Tensor::from_floats(x_values, {rows, k}));
  EXPECT_EQ(y.dtype(), DType::f32);
  // The bias stays f32; weights and input are rounded to bf16.
  expect_matches(y,
                 reference_linear(rounded_to(x_values, DType::bf16),
                                  rounded_to(w_values, DType::bf16), b_values, rows, k, n),
                 "bf16-packed f32 weights");
}

TEST(Linear, ThreeDimensionalInput) {
  const std::int64_t k = 65, n = 33;
  const auto x_values = uniform_values(2 * 7 * k, 600);
  const auto w_values = uniform_values(n * k, 601);
  const PackedLinear linear(Tensor::from_floats(w_values, {n, k}));
  const Tensor y = linear.forward(Tensor::from_floats(x_values, {2, 7, k}));
  ASSERT_EQ(y.shape(), (Shape{2, 7, n}));
  expect_matches(y, reference_linear(x_values, w_values, {}, 14, k, n), "3-D input");
}

TEST(Linear, NonContiguousInput) {
  // x is the transpose of a [k, rows] tensor: its rows are strided.
  const std::int64_t rows = 13, k = 17, n = 5;
  const auto xt_values = uniform_values(k * rows, 700);
  const auto w_values = uniform_values(n * k, 701);
  const Tensor x = Tensor::from_floats(xt_values, {k, rows}).transpose(0, 1);
  ASSERT_FALSE(x.is_contiguous());
  const PackedLinear linear(Tensor::from_floats(w_values, {n, k}));
  expect_matches(linear.forward(x), reference_linear(x.to_floats(), w_values, {}, rows, k, n),
                 "transposed input");
}

TEST(Linear, NonContiguousWeight) {
  // The weight is a transposed view of an [in, out] tensor.
  const std::int64_t rows = 4, k = 19, n = 7;
  const auto x_values = uniform_values(rows * k, 750);
  const Tensor w = Tensor::from_floats(uniform_values(k * n, 751), {k, n}).transpose(0, 1);
  const PackedLinear linear(w);
  expect_matches(linear.forward(Tensor::from_floats(x_values, {rows, k})),
                 reference_linear(x_values, w.to_floats(), {}, rows, k, n), "transposed weight");
}

TEST(Linear, ForwardIntoWritesPreallocatedOutput) {
  const std::int64_t rows = 5, k = 33, n = 65;
  const auto x_values = rounded_to(uniform_values(rows * k, 800), DType::bf16);
  const auto w_values = rounded_to(uniform_values(n * k, 801), DType::bf16);
  const PackedLinear linear(Tensor::from_floats(w_values, {n, k}, DType::bf16));
  const Tensor out = Tensor::zeros({rows, n}, DType::f32);
  linear.forward_into(Tensor::from_floats(x_values, {rows, k}, DType::bf16), out);
  expect_matches(out, reference_linear(x_values, w_values, {}, rows, k, n), "forward_into");
}

TEST(Linear, EmptyInputGivesEmptyOutput) {
  const PackedLinear linear(Tensor::from_floats(uniform_values(12, 850), {3, 4}));
  const Tensor y = linear.forward(Tensor::zeros({0, 4}, DType::f32));
  EXPECT_EQ(y.shape(), (Shape{0, 3}));
}

// Element offsets from PackedLayout must address exactly where oneDNN's reorder put each
// weight, and everything else (padding) must be zero.
void check_layout(DType dtype, std::int64_t k, std::int64_t n) {
  std::vector<float> w_values(static_cast<std::size_t>(n * k));
  for (std::int64_t j = 0; j < n; ++j) {
    for (std::int64_t i = 0; i < k; ++i) {
      w_values[static_cast<std::size_t>(j * k + i)] = static_cast<float>(j * k + i + 1);
    }
  }
  const PackedLinear linear(Tensor::from_floats(w_values, {n, k}, dtype));
  const PackedLayout& layout = linear.layout();
  ASSERT_EQ(layout.k, k);
  ASSERT_EQ(layout.n, n);
  EXPECT_GE(layout.padded_k, k);
  EXPECT_GE(layout.padded_n, n);
  EXPECT_EQ(layout.bytes,
            dtype_bytes(dtype, static_cast<std::size_t>(layout.padded_k * layout.padded_n)));
  EXPECT_EQ(linear.packed_weight().nbytes(), layout.bytes);
  EXPECT_FALSE(layout.format.empty());

  const Tensor& packed = linear.packed_weight();
  const std::size_t element_count = layout.bytes / dtype_bytes(dtype, 1);
  std::vector<float> packed_values(element_count);
  convert_elements(packed.data(), dtype, packed_values.data(), DType::f32, element_count);
  std::set<std::int64_t> addressed;
  for (std::int64_t j = 0; j < n; ++j) {
    for (std::int64_t i = 0; i < k; ++i) {
      const std::int64_t offset = layout.element_offset(i, j);
      ASSERT_GE(offset, 0);
      ASSERT_LT(offset, static_cast<std::int64_t>(element_count));
      ASSERT_EQ(packed_values[static_cast<std::size_t>(offset)],
                w_values[static_cast<std::size_t>(j * k + i)])
          << "k " << i << " n " << j << " in layout " << layout.format;
      addressed.insert(offset);
    }
  }
  for (std::size_t e = 0; e < element_count; ++e) {
    if (!addressed.contains(static_cast<std::int64_t>(e))) {
      ASSERT_EQ(packed_values[e], 0.0f) << "padding element " << e << " in " << layout.format;
    }
  }
}

TEST(Linear, LayoutOffsetsAddressPackedWeightsF32) {
  check_layout(DType::f32, 33, 70);
}

TEST(Linear, LayoutOffsetsAddressPackedWeightsBf16) {
  // bf16 represents integers up to 256 exactly, so the matrix stays small.
  check_layout(DType::bf16, 17, 13);
  check_layout(DType::bf16, 3, 65);
}

TEST(Linear, WriteRowsMatchesPackingConstructor) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    const std::int64_t k = 37, n = 70;
    const auto w_values = uniform_values(n * k, 900);
    const Tensor w = Tensor::from_floats(w_values, {n, k});
    const PackedLinear packed(w, Tensor(), dtype);
    PackedLinear written = PackedLinear::allocate(n, k, dtype);
    // Rows arrive in two pieces, the first as f32 and the second already in bf16.
    written.write_rows(w.narrow(0, 0, 30).contiguous(), 0);
    written.write_rows(w.narrow(0, 30, n - 30).to(DType::bf16).contiguous(), 30);
    const auto packed_bytes = static_cast<const std::uint8_t*>(packed.packed_weight().data());
    const auto written_bytes = static_cast<const std::uint8_t*>(written.packed_weight().data());
    if (dtype == DType::bf16) {
      EXPECT_EQ(std::memcmp(packed_bytes, written_bytes, packed.layout().bytes), 0);
    } else {
      // Rows 30 and up went through bf16, so compare the forward results instead.
      const auto x_values = uniform_values(3 * k, 901);
      auto rounded_w = w_values;
      const auto tail =
          rounded_to(std::vector<float>(w_values.begin() + 30 * k, w_values.end()), DType::bf16);
      std::copy(tail.begin(), tail.end(), rounded_w.begin() + 30 * k);
      expect_matches(written.forward(Tensor::from_floats(x_values, {3, k})),
                     reference_linear(x_values, rounded_w, {}, 3, k, n), "write_rows f32");
      EXPECT_EQ(std::memcmp(packed_bytes, written_bytes,
                            static_cast<std::size_t>(packed.layout().n_offset(30) * 4)),
                0);
    }
  }
}

TEST(Linear, RejectsWrongInputFeatures) {
  const PackedLinear linear(Tensor::from_floats(uniform_values(12, 1000), {3, 4}));
  try {
    linear.forward(Tensor::zeros({2, 5}, DType::f32));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("in_features 4"));
    EXPECT_THAT(error.what(), HasSubstr("[2, 5]"));
  }
}

TEST(Linear, RejectsUnsupportedDtypes) {
  try {
    PackedLinear linear(Tensor::zeros({3, 4}, DType::int8));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("weight dtype is int8"));
  }
  const PackedLinear linear(Tensor::from_floats(uniform_values(12, 1001), {3, 4}));
  try {
    linear.forward(Tensor::zeros({2, 4}, DType::f16));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("input dtype is f16"));
  }
}

TEST(Linear, RejectsMismatchedBiasAndWeightRank) {
  try {
    PackedLinear linear(Tensor::zeros({3, 4}, DType::f32), Tensor::zeros({4}, DType::f32));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("does not match out_features 3"));
  }
  try {
    PackedLinear linear(Tensor::zeros({3, 4, 1}, DType::f32));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("2-D tensor [out_features, in_features]"));
  }
}

TEST(Linear, RejectsWrongOutputAndRows) {
  PackedLinear linear = PackedLinear::allocate(3, 4, DType::f32);
  try {
    linear.forward_into(Tensor::zeros({2, 4}, DType::f32), Tensor::zeros({2, 4}, DType::f32));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("expected a contiguous tensor [2, 3]"));
  }
  try {
    linear.write_rows(Tensor::zeros({2, 4}, DType::f32), 2);
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("exceeds out_features 3"));
  }
}

TEST(Linear, PackedWeightsAreCountedByAllocator) {
  const Tensor w = Tensor::from_floats(uniform_values(130 * 65, 1100), {130, 65}, DType::bf16);
  const AllocatorStats stats = testing::stats_of_run(false, [&] {
    const PackedLinear linear(w);
    EXPECT_EQ(current_allocator(Device::cpu()).stats().allocated_bytes.current,
              static_cast<std::int64_t>(CpuCachingAllocator::round_size(linear.layout().bytes)));
  });
  EXPECT_EQ(stats.allocation_count, 1);
  EXPECT_EQ(stats.allocated_bytes.current, 0);
}

// Construction and forward with inputs made inside the run, so a dry run gets dry tensors.
void linear_workload(DType dtype, std::vector<Shape>* output_shapes) {
  const Tensor w = Tensor::zeros({130, 65}, dtype);
  const Tensor b = Tensor::zeros({130}, dtype);
  const PackedLinear linear(w, b);
  for (std::int64_t rows : {1, 17, 300}) {
    const Tensor x = Tensor::zeros({rows, 65}, DType::f32);
    const Tensor y = linear.forward(x, DType::bf16);
    const Tensor z = linear.forward(x);
    output_shapes->push_back(y.shape());
    output_shapes->push_back(z.shape());
  }
}

TEST(Linear, DryRunAllocatesLikeRealRun) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    std::vector<Shape> real_shapes, dry_shapes;
    const auto real = testing::stats_of_run(false, [&] { linear_workload(dtype, &real_shapes); });
    const auto dry = testing::stats_of_run(true, [&] { linear_workload(dtype, &dry_shapes); });
    testing::expect_same_statistics(real, dry);
    EXPECT_EQ(real_shapes, dry_shapes);
    ASSERT_EQ(dry_shapes.size(), 6u);
    EXPECT_EQ(dry_shapes[4], (Shape{300, 130}));
  }
}

TEST(Linear, DryWeightPacksWithoutReading) {
  CpuCachingAllocator dry_allocator(CpuCachingAllocator::Options{.dry_run = true});
  ScopedAllocator scope(dry_allocator);
  const Tensor w = Tensor::empty({300, 200}, DType::bf16);
  ASSERT_TRUE(w.is_dry());
  const PackedLinear linear(w);
  EXPECT_TRUE(linear.packed_weight().is_dry());
  EXPECT_EQ(linear.packed_weight().nbytes(), linear.layout().bytes);
  const Tensor y = linear.forward(Tensor::empty({2, 9, 200}, DType::bf16));
  EXPECT_TRUE(y.is_dry());
  EXPECT_EQ(y.shape(), (Shape{2, 9, 300}));
}

TEST(Linear, AvoidsReferenceKernelAcrossRows) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (auto [k, n] : {std::pair<std::int64_t, std::int64_t>{3072, 3072}, {17, 130}, {130, 33}}) {
      const PackedLinear linear(Tensor::zeros({n, k}, dtype));
      for (std::int64_t rows : {1, 3, 17, 256, 4096}) {
        EXPECT_THAT(linear.implementation(rows, dtype),
                    ::testing::Not(::testing::StartsWith("ref")))
            << dtype_name(dtype) << " rows " << rows << " k " << k << " n " << n;
      }
    }
  }
}

TEST(Linear, Bf16UsesBrgemmKernelWhereAvailable) {
  if (!__builtin_cpu_supports("avx512bf16")) {
    GTEST_SKIP() << "this CPU has no AVX-512 BF16 instructions";
  }
  const PackedLinear linear(Tensor::zeros({256, 512}, DType::bf16));
  EXPECT_THAT(linear.implementation(1024, DType::bf16), HasSubstr("brg"));
  EXPECT_THAT(linear.implementation(1, DType::bf16), HasSubstr("brg"));
  EXPECT_EQ(linear.layout().format, "BA16a64b2a");
}

}  // namespace
}  // namespace ethereal::cpu
