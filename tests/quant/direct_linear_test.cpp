// The direct (few-row) kernels of QuantizedLinear against a double-precision reference on the
// dequantised weights. in_features 256 takes the fast decoders of all formats. 192, 100 and 99
// take the natural-order nf4 decoder (with blocks that span two rows, and for 99 rows that start
// inside a byte), and 100 and 99 end the fp8 and int8 rows in a partial chunk of 64.
//
// Tolerance. x is rounded to bf16 first, and the reference multiplies the weights the kernels
// multiply: dequantize(weight) in f32 for fp8 and int8, whose codes are exact in bf16 and whose
// scale multiplies each channel's f32 sum, and dequantize(weight, bf16) for nf4. Every product
// is then exact in f32, so what remains is f32 accumulation, at most (k + 4) units of 2^-24
// times sum |x w|, plus for a bf16 output half a bf16 unit in the last place (2^-9 relative,
// bounded here by 2^-8 |y|).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "quant/quantize.h"
#include "quant/quantized_linear.h"
#include "quant_test_support.h"
#include "runtime/dtype.h"

namespace ethereal::quant {
namespace {

using Path = QuantizedLinearOptions::Path;

struct FormatCase {
  QuantFormat format;
  ScaleGranularity fp8_scales;
};

const FormatCase kFormats[] = {{QuantFormat::fp8_e4m3, ScaleGranularity::per_channel},
                               {QuantFormat::fp8_e4m3, ScaleGranularity::per_tensor},
                               {QuantFormat::nf4, ScaleGranularity::per_channel},
                               {QuantFormat::int8, ScaleGranularity::per_channel}};

std::string format_label(const FormatCase& f) {
  return fmt::format("{}{}", quant_format_name(f.format),
                     f.fp8_scales == ScaleGranularity::per_tensor ? " per tensor" : "");
}

// The weights the direct kernels multiply, as floats: see the file comment.
std::vector<float> multiplied_weights(const QuantizedWeight& q) {
  return dequantize(q, q.format == QuantFormat::nf4 ? DType::bf16 : DType::f32).to_floats();
}

// Checks y [rows, n] (flat) against the first rows of `expected`, the reference on x (bf16
// values) and the weights above.
void expect_matches_reference(const std::vector<float>& actual, const testing::Reference& expected,
                              std::int64_t k, std::int64_t n, DType out_dtype,
                              const std::string& label) {
  ASSERT_LE(actual.size(), expected.value.size()) << label;
  int reported = 0;
  for (std::size_t i = 0; i < actual.size() && reported < 5; ++i) {
    double bound = static_cast<double>(k + 4) * std::ldexp(expected.absolute_sum[i], -24) + 1e-30;
    if (out_dtype == DType::bf16) {
      bound += std::ldexp(std::fabs(expected.value[i]), -8);
    }
    const double error = std::fabs(actual[i] - expected.value[i]);
    if (!(error <= bound)) {
      ADD_FAILURE() << label << ": row " << i / static_cast<std::size_t>(n) << " channel "
                    << i % static_cast<std::size_t>(n) << " is " << actual[i] << ", expected "
                    << expected.value[i] << " within " << bound;
      ++reported;
    }
  }
}

struct LayerData {
  QuantizedWeight weight;
  std::vector<float> weights;  // multiplied_weights(weight)
  std::vector<float> bias;
};

LayerData make_layer(const FormatCase& f, std::int64_t n, std::int64_t k, bool with_bias,
                     std::uint32_t seed) {
  LayerData layer;
  const auto values = testing::normal_values(static_cast<std::size_t>(n * k), seed, 0.05f);
  layer.weight =
      quantize(Tensor::from_floats(values, {n, k}), f.format, {.fp8_scales = f.fp8_scales});
  layer.weights = multiplied_weights(layer.weight);
  if (with_bias) {
    layer.bias = testing::uniform_values(static_cast<std::size_t>(n), seed + 1);
  }
  return layer;
}

// Runs the direct path on the first `rows` rows of x [.., k] (bf16 values) and checks the
// result against `expected`, the reference on all rows of x.
void check_rows(const LayerData& layer, const std::vector<float>& x,
                const testing::Reference& expected, std::int64_t rows, DType x_dtype,
                DType out_dtype, const std::string& label) {
  const std::int64_t n = layer.weight.out_features, k = layer.weight.in_features;
  const QuantizedLinear linear(layer.weight,
                               layer.bias.empty() ? Tensor() : Tensor::from_floats(layer.bias, {n}),
                               {.path = Path::direct});
  const std::vector<float> x_rows(x.begin(), x.begin() + rows * k);
  const Tensor y = linear.forward(Tensor::from_floats(x_rows, {rows, k}, x_dtype), out_dtype);
  ASSERT_EQ(y.shape(), (Shape{rows, n})) << label;
  ASSERT_EQ(y.dtype(), out_dtype) << label;
  expect_matches_reference(y.to_floats(), expected, k, n, out_dtype, label);
}

// Checks `rows` rows of seeded input.
void check_rows(const LayerData& layer, std::int64_t rows, DType x_dtype, DType out_dtype,
                std::uint32_t seed, const std::string& label) {
  const std::int64_t n = layer.weight.out_features, k = layer.weight.in_features;
  const auto x =
      testing::rounded_to_bf16(testing::uniform_values(static_cast<std::size_t>(rows * k), seed));
  check_rows(layer, x, testing::reference_linear(x, layer.weights, layer.bias, rows, k, n), rows,
             x_dtype, out_dtype, label);
}

TEST(DirectLinear, EveryRowCountMatchesReference) {
  // N = 37 leaves partial tiles of every kernel (8, 4 and 2 channels). Every row count from 1
  // to 63 covers each register kernel (1 to 8 rows) and every micro-tile height of the buffered
  // kernel (1 to 6 rows).
  const std::int64_t n = 37, max_rows = 63;
  std::uint32_t seed = 100;
  for (const FormatCase& f : kFormats) {
    for (const std::int64_t k : {256, 192, 100, 99}) {
      const LayerData layer = make_layer(f, n, k, k != 192, ++seed);
      const auto x = testing::rounded_to_bf16(
          testing::uniform_values(static_cast<std::size_t>(max_rows * k), ++seed));
      const testing::Reference expected =
          testing::reference_linear(x, layer.weights, layer.bias, max_rows, k, n);
      for (std::int64_t rows = 1; rows <= max_rows; ++rows) {
        const DType x_dtype = rows % 2 == 0 ? DType::bf16 : DType::f32;
        const DType out_dtype = (rows + k) % 3 == 0 ? DType::bf16 : DType::f32;
        check_rows(layer, x, expected, rows, x_dtype, out_dtype,
                   fmt::format("{} k {} rows {} x {} out {}", format_label(f), k, rows,
                               dtype_name(x_dtype), dtype_name(out_dtype)));
      }
    }
  }
}

TEST(DirectLinear, ColumnBlocksAndRowGroupsMatchReference) {
  // K = 7040 runs the register kernels (1, 2 and 7 rows) over two segments of columns and the
  // buffered kernel (13 rows) over three blocks of columns (at most 3072 each). 70 rows (the
  // direct path forced) run as two groups of rows.
  std::uint32_t seed = 300;
  for (const FormatCase& f : kFormats) {
    const LayerData wide = make_layer(f, 9, 7040, true, ++seed);
    for (const std::int64_t rows : {1, 2, 7, 13}) {
      check_rows(wide, rows, DType::bf16, DType::f32, ++seed,
                 fmt::format("{} k 7040 rows {}", format_label(f), rows));
    }
    const LayerData tall = make_layer(f, 13, 128, false, ++seed);
    check_rows(tall, 70, DType::f32, DType::f32, ++seed,
               fmt::format("{} k 128 rows 70", format_label(f)));
  }
}

TEST(DirectLinear, StridedAndLeadingAxesMatchContiguous) {
  const std::int64_t k = 256, n = 21;
  std::uint32_t seed = 400;
  for (const FormatCase& f : kFormats) {
    const LayerData layer = make_layer(f, n, k, true, ++seed);
    const QuantizedLinear linear(layer.weight, Tensor::from_floats(layer.bias, {n}),
                                 {.path = Path::direct});
    for (const std::int64_t rows : {1, 6}) {
      const auto values = testing::uniform_values(static_cast<std::size_t>(rows * k), ++seed);
      const Tensor flat = Tensor::from_floats(values, {rows, k});
      const Tensor strided = flat.transpose(0, 1).contiguous().transpose(0, 1);
      if (rows > 1) {
        ASSERT_FALSE(strided.is_contiguous());
      }
      const auto expected = linear.forward(flat).to_floats();
      EXPECT_EQ(linear.forward(strided).to_floats(), expected) << format_label(f);
      const Tensor three_d = linear.forward(Tensor::from_floats(values, {1, rows, k}));
      EXPECT_EQ(three_d.shape(), (Shape{1, rows, n}));
      EXPECT_EQ(three_d.to_floats(), expected) << format_label(f);
    }
  }
}

// An fp8 weight [n, 256] whose rows hold every finite code: 0x00 ... 0x7E and 0x80 ... 0xFE,
// row n rotated by 7 n, with the remaining two columns 0x00 and 0x80.
QuantizedWeight all_fp8_codes(std::int64_t n, ScaleGranularity scales) {
  std::vector<std::uint8_t> codes;
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7F) != 0x7F) {
      codes.push_back(static_cast<std::uint8_t>(code));
    }
  }
  codes.push_back(0x00);
  codes.push_back(0x80);
  const std::int64_t k = static_cast<std::int64_t>(codes.size());
  QuantizedWeight q;
  q.format = QuantFormat::fp8_e4m3;
  q.out_features = n;
  q.in_features = k;
  q.values = Tensor::empty({n, k}, DType::fp8_e4m3);
  auto* values = q.values.data_as<std::uint8_t>();
  for (std::int64_t row = 0; row < n; ++row) {
    for (std::int64_t col = 0; col < k; ++col) {
      values[row * k + col] = codes[static_cast<std::size_t>((col + 7 * row) % k)];
    }
  }
  std::vector<float> scale_values(scales == ScaleGranularity::per_tensor ? 1 : n);
  for (std::size_t i = 0; i < scale_values.size(); ++i) {
    scale_values[i] = 1e-3f * static_cast<float>(i + 1);
  }
  q.scales = Tensor::from_floats(scale_values, {static_cast<std::int64_t>(scale_values.size())});
  return q;
}

TEST(DirectLinear, Fp8EveryCodeMatchesReference) {
  // Subnormal codes, zeros of both signs and ±448 all go through the same table lookup.
  for (const ScaleGranularity scales :
       {ScaleGranularity::per_channel, ScaleGranularity::per_tensor}) {
    const QuantizedWeight q = all_fp8_codes(11, scales);
    const LayerData layer{q, multiplied_weights(q), {}};
    for (const std::int64_t rows : {1, 3, 6, 12}) {
      check_rows(layer, rows, DType::f32, DType::f32, 500,
                 fmt::format("fp8 every code, per {}, rows {}",
                             scales == ScaleGranularity::per_tensor ? "tensor" : "channel", rows));
    }
  }
}

TEST(DirectLinear, Fp8NanCodeGivesNan) {
  // The quantiser never writes 0x7F or 0xFF, but a loaded checkpoint may, and the direct kernels
  // decode them as NaN. Channel 2 contains one 0x7F, channel 5 one 0xFF.
  const std::int64_t n = 9, k = 128;
  QuantizedWeight q = quantize_fp8_e4m3(
      Tensor::from_floats(testing::normal_values(static_cast<std::size_t>(n * k), 600), {n, k}),
      ScaleGranularity::per_channel);
  q.values.data_as<std::uint8_t>()[2 * k + 77] = 0x7F;
  q.values.data_as<std::uint8_t>()[5 * k + 3] = 0xFF;
  const QuantizedLinear linear(q, Tensor(), {.path = Path::direct});
  // 1, 2, 3 and 8 rows take the register kernels and 12 the buffered one, with both output
  // dtypes.
  for (const std::int64_t rows : {1, 2, 3, 8, 12}) {
    for (const DType out_dtype : {DType::f32, DType::bf16}) {
      const Tensor x = Tensor::from_floats(
          testing::uniform_values(static_cast<std::size_t>(rows * k), 601), {rows, k});
      const auto y = linear.forward(x, out_dtype).to_floats();
      for (std::int64_t m = 0; m < rows; ++m) {
        for (std::int64_t j = 0; j < n; ++j) {
          EXPECT_EQ(std::isnan(y[static_cast<std::size_t>(m * n + j)]), j == 2 || j == 5)
              << "rows " << rows << " out " << dtype_name(out_dtype) << " row " << m << " channel "
              << j;
        }
      }
    }
  }
}

TEST(DirectLinear, Int8MinusOneTwentyEightMatchesReference) {
  // The quantiser writes codes in [-127, 127], but a stored int8 layer may contain -128, whose
  // magnitude does not fit the 7-bit table index of the vector decoder.
  const std::int64_t n = 10, k = 192;
  QuantizedWeight q = quantize_int8(
      Tensor::from_floats(testing::normal_values(static_cast<std::size_t>(n * k), 700), {n, k}));
  auto* codes = q.values.data_as<std::int8_t>();
  for (std::int64_t i = 5; i < n * k; i += 97) {
    codes[i] = -128;
  }
  const LayerData layer{q, multiplied_weights(q), {}};
  for (const std::int64_t rows : {1, 4, 6, 12}) {
    check_rows(layer, rows, DType::bf16, DType::f32, 701,
               fmt::format("int8 with -128, rows {}", rows));
  }
}

TEST(DirectLinear, DryRunAllocatesLikeRealRun) {
  // K = 256 takes the fast decoders; K = 100 the natural-order nf4 decoder and the partial last
  // chunk of fp8 and int8. One row and several.
  for (const FormatCase& f : kFormats) {
    for (const std::int64_t k : {256, 100}) {
      for (const std::int64_t rows : {1, 5}) {
        const std::int64_t n = 40;
        const auto w_values = testing::normal_values(static_cast<std::size_t>(n * k), 800);
        const auto x_values = testing::uniform_values(static_cast<std::size_t>(rows * k), 801);
        auto body = [&] {
          const QuantizedWeight q = quantize(Tensor::from_floats(w_values, {n, k}), f.format,
                                             {.fp8_scales = f.fp8_scales});
          const QuantizedLinear linear(q,
                                       Tensor::from_floats(testing::uniform_values(n, 802), {n}));
          ASSERT_TRUE(linear.uses_direct_path(rows));
          const Tensor y = linear.forward(Tensor::from_floats(x_values, {rows, k}, DType::f32));
          EXPECT_EQ(y.shape(), (Shape{rows, n}));
        };
        const AllocatorStats real = testing::stats_of_run(false, body);
        const AllocatorStats dry = testing::stats_of_run(true, body);
        SCOPED_TRACE(fmt::format("{} k {} rows {}", format_label(f), k, rows));
        testing::expect_same_statistics(real, dry);
      }
    }
  }
}

}  // namespace
}  // namespace ethereal::quant
