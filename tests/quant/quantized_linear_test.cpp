#include "quant/quantized_linear.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/linear.h"
#include "quant/quantize.h"
#include "quant_test_support.h"
#include "runtime/error.h"

namespace ethereal::quant {
namespace {

using ::testing::HasSubstr;
using Path = QuantizedLinearOptions::Path;

struct LinearCase {
  std::int64_t rows, k, n;
  bool with_bias;
};

// Row counts on both sides of the direct-path limit (64); K and N off the 32 x 64 tiles.
const LinearCase kCases[] = {{1, 17, 130, true},  {3, 130, 17, false},  {17, 200, 200, true},
                             {63, 64, 65, true},  {64, 17, 130, false}, {65, 130, 200, true},
                             {130, 200, 33, true}};

struct FormatCase {
  QuantFormat format;
  ScaleGranularity fp8_scales;
};

const FormatCase kFormats[] = {{QuantFormat::fp8_e4m3, ScaleGranularity::per_channel},
                               {QuantFormat::fp8_e4m3, ScaleGranularity::per_tensor},
                               {QuantFormat::nf4, ScaleGranularity::per_channel},
                               {QuantFormat::int8, ScaleGranularity::per_channel}};

// Both paths round x to bf16. The matmul path also rounds the dequantised weights to bf16 and
// the direct path rounds nf4 values to bf16, each product then being off by at most 2^-9 of
// |x w|; 2^-8 leaves room for f32 accumulation. A bf16 output adds half a unit in the last
// place (2^-9 relative), bounded by 2^-8.
double tolerance(double value, double absolute_sum, std::int64_t k, DType out_dtype) {
  double bound = std::ldexp(absolute_sum, -8) +
                 static_cast<double>(k + 2) * std::ldexp(absolute_sum, -24) + 1e-6;
  if (out_dtype == DType::bf16) {
    bound += std::ldexp(std::fabs(value), -8);
  }
  return bound;
}

void check_case(const LinearCase& c, const FormatCase& f, Path path, DType x_dtype, DType out_dtype,
                std::uint32_t seed) {
  const auto w_values = testing::normal_values(static_cast<std::size_t>(c.n * c.k), seed, 0.05f);
  const auto x_values = testing::uniform_values(static_cast<std::size_t>(c.rows * c.k), seed + 1);
  const auto b_values = c.with_bias
                            ? testing::uniform_values(static_cast<std::size_t>(c.n), seed + 2)
                            : std::vector<float>();
  const QuantizedWeight q =
      quantize(Tensor::from_floats(w_values, {c.n, c.k}), f.format, {.fp8_scales = f.fp8_scales});
  const auto w_dequantised = dequantize(q).to_floats();

  // Panels of 64 channels, so N = 130 and 200 run several panels and a narrower last one, and
  // chunks of 32 rows, so 65 and 130 rows run several chunks and a shorter last one.
  const QuantizedLinear linear(q, c.with_bias ? Tensor::from_floats(b_values, {c.n}) : Tensor(),
                               {.panel_columns = 64, .chunk_rows = 32, .path = path});
  const Tensor x = Tensor::from_floats(x_values, {c.rows, c.k}, x_dtype);
  const Tensor y = linear.forward(x, out_dtype);
  ASSERT_EQ(y.shape(), (Shape{c.rows, c.n}));
  ASSERT_EQ(y.dtype(), out_dtype);

  const testing::Reference expected = testing::reference_linear(
      testing::rounded_to_bf16(x_values), w_dequantised, b_values, c.rows, c.k, c.n);
  const auto actual = y.to_floats();
  const std::string label =
      fmt::format("{}{} {} rows {} k {} n {} bias {} x {} out {}", quant_format_name(f.format),
                  f.fp8_scales == ScaleGranularity::per_tensor ? " per tensor" : "",
                  path == Path::direct ? "direct" : "dequantize+matmul", c.rows, c.k, c.n,
                  c.with_bias, dtype_name(x_dtype), dtype_name(out_dtype));
  int reported = 0;
  for (std::size_t i = 0; i < actual.size() && reported < 5; ++i) {
    const double bound = tolerance(expected.value[i], expected.absolute_sum[i], c.k, out_dtype);
    const double error = std::fabs(actual[i] - expected.value[i]);
    if (!(error <= bound)) {
      ADD_FAILURE() << label << ": element " << i << " is " << actual[i] << ", expected "
                    << expected.value[i] << " within " << bound;
      ++reported;
    }
  }
}

TEST(QuantizedLinear, DirectPathMatchesReference) {
  std::uint32_t seed = 10;
  for (const FormatCase& f : kFormats) {
    for (const LinearCase& c : kCases) {
      seed += 3;
      const bool bf16_input = seed % 2 == 0;
      check_case(c, f, Path::direct, bf16_input ? DType::bf16 : DType::f32,
                 bf16_input ? DType::f32 : DType::bf16, seed);
    }
  }
}

TEST(QuantizedLinear, DirectKernelsMatchReference) {
  // Rows 1 to 8 run the register kernel: sequential at 1 and 2 rows, else tiles of 4 or 2
  // channels. Rows from 9 run the buffered kernel. K = 384 gives nf4's 128-code decoder an odd
  // number of chunks, and K = 320 selects its 32-element decoder. K = 352 ends fp8 and int8
  // rows in a partial chunk. N = 37 leaves a partial last tile at every tile width.
  std::uint32_t seed = 500;
  for (const FormatCase& f : kFormats) {
    for (const std::int64_t k : {384, 320, 352}) {
      for (const std::int64_t rows : {1, 2, 3, 4, 5, 8, 9}) {
        seed += 3;
        check_case({rows, k, 37, rows % 2 == 1}, f, Path::direct, DType::f32,
                   rows % 3 == 0 ? DType::bf16 : DType::f32, seed);
      }
    }
  }
}

TEST(QuantizedLinear, MatmulPathMatchesReference) {
  std::uint32_t seed = 1000;
  for (const FormatCase& f : kFormats) {
    for (const LinearCase& c : kCases) {
      seed += 3;
      const bool bf16_input = seed % 2 == 0;
      check_case(c, f, Path::dequantize_matmul, bf16_input ? DType::bf16 : DType::f32,
                 bf16_input ? DType::bf16 : DType::f32, seed);
    }
  }
}

TEST(QuantizedLinear, AutomaticPathMatchesReference) {
  std::uint32_t seed = 2000;
  for (const FormatCase& f : kFormats) {
    check_case({5, 130, 200, true}, f, Path::automatic, DType::bf16, DType::bf16, ++seed);
    check_case({70, 130, 200, true}, f, Path::automatic, DType::f32, DType::f32, ++seed);
  }
}

TEST(QuantizedLinear, Fp8ZeroAndSubnormalCodes) {
  // Exact zeros and values far below amax / 448 * 2^-6 encode as fp8 zero and subnormal codes,
  // which the direct path decodes exactly. Every fourth weight is such a value; K = 96 ends each
  // row in a partial chunk of 64.
  for (const std::int64_t k : {128, 96}) {
    const std::int64_t n = 9;
    auto w_values = testing::normal_values(static_cast<std::size_t>(n * k), 21, 0.05f);
    for (std::size_t i = 0; i < w_values.size(); i += 4) {
      w_values[i] = (i % 8 == 0) ? 0.0f : w_values[i] * 1e-5f;
    }
    const QuantizedWeight q =
        quantize_fp8_e4m3(Tensor::from_floats(w_values, {n, k}), ScaleGranularity::per_channel);
    const auto* codes = q.values.data_as<const std::uint8_t>();
    int small_codes = 0;
    for (std::int64_t i = 0; i < n * k; ++i) {
      small_codes += (codes[i] & 0x78) == 0 ? 1 : 0;
    }
    ASSERT_GE(small_codes, n * k / 4);
    const auto w_dequantised = dequantize(q).to_floats();
    for (const std::int64_t rows : {1, 5}) {
      const auto x_values =
          testing::rounded_to_bf16(testing::uniform_values(static_cast<std::size_t>(rows * k), 22));
      const QuantizedLinear linear(q, Tensor(), {.path = Path::direct});
      const auto actual =
          linear.forward(Tensor::from_floats(x_values, {rows, k}), DType::f32).to_floats();
      const testing::Reference expected =
          testing::reference_linear(x_values, w_dequantised, {}, rows, k, n);
      for (std::size_t i = 0; i < actual.size(); ++i) {
        // fp8 and int8 products are exact on the direct path: only f32 accumulation remains.
        EXPECT_NEAR(actual[i], expected.value[i],
                    static_cast<double>(k + 2) * std::ldexp(expected.absolute_sum[i], -24) + 1e-7)
            << "k " << k << " rows " << rows << " element " << i;
      }
    }
  }
}

TEST(QuantizedLinear, SinglePanelEqualsPackedLinearOnDequantisedWeights) {
  // With one panel the matmul path runs the same oneDNN matmul on the same bf16 weights as
  // cpu::PackedLinear, so the outputs are identical.
  const std::int64_t rows = 70, k = 200, n = 130;
  const auto x = Tensor::from_floats(testing::uniform_values(rows * k, 1), {rows, k}, DType::bf16);
  const auto bias = Tensor::from_floats(testing::uniform_values(n, 2), {n});
  for (QuantFormat format : {QuantFormat::fp8_e4m3, QuantFormat::nf4, QuantFormat::int8}) {
    const QuantizedWeight q =
        quantize(Tensor::from_floats(testing::normal_values(n * k, 3), {n, k}), format);
    const QuantizedLinear linear(q, bias, {.path = Path::dequantize_matmul});
    ASSERT_EQ(linear.panel_columns(), 192);
    const cpu::PackedLinear reference(dequantize(q, DType::bf16), bias);
    EXPECT_EQ(linear.forward(x).to_floats(), reference.forward(x).to_floats())
        << quant_format_name(format);
  }
}

TEST(QuantizedLinear, LeadingAxesAndStridesDoNotChangeResult) {
  const std::int64_t k = 130, n = 65;
  const QuantizedWeight q =
      quantize_nf4(Tensor::from_floats(testing::normal_values(n * k, 4), {n, k}));
  for (Path path : {Path::direct, Path::dequantize_matmul}) {
    const QuantizedLinear linear(q, Tensor(), {.panel_columns = 64, .path = path});
    const auto values = testing::uniform_values(10 * k, 5);
    const Tensor flat = Tensor::from_floats(values, {10, k});
    const Tensor three_d = Tensor::from_floats(values, {2, 5, k});
    const Tensor strided = flat.transpose(0, 1).contiguous().transpose(0, 1);
    ASSERT_FALSE(strided.is_contiguous());
    const auto expected = linear.forward(flat).to_floats();
    const Tensor y3 = linear.forward(three_d);
    EXPECT_EQ(y3.shape(), (Shape{2, 5, n}));
    EXPECT_EQ(y3.to_floats(), expected);
    EXPECT_EQ(linear.forward(strided).to_floats(), expected);
  }
}

TEST(QuantizedLinear, Bf16BiasIsUsed) {
  const std::int64_t rows = 2, k = 64, n = 64;
  const QuantizedWeight q = quantize_int8(Tensor::zeros({n, k}, DType::f32));
  const auto bias_values = testing::rounded_to_bf16(testing::uniform_values(n, 6));
  const QuantizedLinear linear(q, Tensor::from_floats(bias_values, {n}, DType::bf16));
  const Tensor y =
      linear.forward(Tensor::from_floats(testing::uniform_values(rows * k, 7), {rows, k}));
  const auto values = y.to_floats();
  for (std::int64_t m = 0; m < rows; ++m) {
    for (std::int64_t j = 0; j < n; ++j) {
      EXPECT_EQ(values[static_cast<std::size_t>(m * n + j)],
                bias_values[static_cast<std::size_t>(j)]);
    }
  }
}

// An int8 weight of zeros built directly, to skip quantising large matrices.
QuantizedWeight zero_int8_weight(std::int64_t n, std::int64_t k) {
  QuantizedWeight q;
  q.format = QuantFormat::int8;
  q.out_features = n;
  q.in_features = k;
  q.values = Tensor::zeros({n, k}, DType::int8);
  q.scales = Tensor::zeros({n}, DType::f32);
  return q;
}

TEST(QuantizedLinear, PathSelectionAndPanelWidth) {
  const QuantizedWeight q = zero_int8_weight(12288, 64);
  const QuantizedLinear linear(q);
  EXPECT_TRUE(linear.uses_direct_path(159));
  EXPECT_FALSE(linear.uses_direct_path(160));
  // 12288 x 64 in bf16 is 1.5 MiB, so one panel.
  EXPECT_EQ(linear.panel_columns(), 12288);

  const QuantizedLinear limited(q, Tensor(), {.direct_row_limit = 1, .panel_columns = 100});
  EXPECT_FALSE(limited.uses_direct_path(1));
  EXPECT_EQ(limited.panel_columns(), 128);
}

TEST(QuantizedLinear, DefaultPanelsForTransformerShapes) {
  // 3072 x 3072 in bf16 is 18 MiB, at most 24 MiB: one panel. K = 3072: 1365 bf16 columns fit
  // in 8 MiB, so N = 12288 splits into 10 equal panels of 1280 (the last one 768). K = 12288:
  // 341 columns fit, so N = 3072 splits into 10 panels of 320.
  const auto panels = [](std::int64_t n, std::int64_t k) {
    return QuantizedLinear(zero_int8_weight(n, k)).panel_columns();
  };
  EXPECT_EQ(panels(3072, 3072), 3072);
  EXPECT_EQ(panels(12288, 3072), 1280);
  EXPECT_EQ(panels(3072, 12288), 320);
  EXPECT_EQ(panels(100, 17), 128);
}

TEST(QuantizedLinear, RejectsMismatchedShapes) {
  const QuantizedWeight q = quantize_int8(Tensor::zeros({8, 16}, DType::f32));
  const QuantizedLinear linear(q);
  EXPECT_THAT(
      [&] {
        linear.forward(Tensor::zeros({2, 15}, DType::f32));
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("does not end in in_features 16")));
  EXPECT_THAT(
      [&] {
        linear.forward_into(Tensor::zeros({2, 16}, DType::f32), Tensor::zeros({2, 7}, DType::f32));
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("expected a contiguous tensor [2, 8]")));
  EXPECT_THAT(
      [&] {
        linear.forward(Tensor::zeros({2, 16}, DType::int32));
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("expected f32 or bf16")));
  EXPECT_THAT([&] { QuantizedLinear(q, Tensor::zeros({7}, DType::f32)); },
              ::testing::ThrowsMessage<Error>(HasSubstr("does not match out_features 8")));
  QuantizedWeight broken = q;
  broken.values = Tensor::zeros({8, 16}, DType::uint8);
  EXPECT_THAT([&] { QuantizedLinear(std::move(broken)); },
              ::testing::ThrowsMessage<InvalidInputError>(HasSubstr("field values")));
}

TEST(QuantizedLinear, DryRunAllocatesLikeRealRun) {
  struct DryCase {
    std::int64_t rows;
    DType x_dtype;
    std::int64_t panel_columns;
    std::int64_t chunk_rows;
  };
  // Direct path; one panel; several panels with a narrower last one and chunks of rows with a
  // shorter last one; f32 input (converted).
  const DryCase cases[] = {{3, DType::bf16, 0, 0},
                           {70, DType::bf16, 0, 0},
                           {70, DType::f32, 64, 32},
                           {100, DType::bf16, 128, 0}};
  const std::int64_t k = 130, n = 200;
  const auto w_values = testing::normal_values(n * k, 8);
  for (QuantFormat format : {QuantFormat::fp8_e4m3, QuantFormat::nf4, QuantFormat::int8}) {
    for (const DryCase& c : cases) {
      const auto x_values = testing::uniform_values(static_cast<std::size_t>(c.rows * k), 9);
      auto body = [&] {
        const QuantizedWeight q = quantize(Tensor::from_floats(w_values, {n, k}), format);
        const QuantizedLinear linear(
            q, Tensor::from_floats(testing::uniform_values(n, 10), {n}),
            {.panel_columns = c.panel_columns, .chunk_rows = c.chunk_rows});
        const Tensor y = linear.forward(Tensor::from_floats(x_values, {c.rows, k}, c.x_dtype));
        EXPECT_EQ(y.shape(), (Shape{c.rows, n}));
      };
      const AllocatorStats real = testing::stats_of_run(false, body);
      const AllocatorStats dry = testing::stats_of_run(true, body);
      SCOPED_TRACE(fmt::format("{} rows {} x {} panel {} chunk {}", quant_format_name(format),
                               c.rows, dtype_name(c.x_dtype), c.panel_columns, c.chunk_rows));
      testing::expect_same_statistics(real, dry);
    }
  }
}

}  // namespace
}  // namespace ethereal::quant
