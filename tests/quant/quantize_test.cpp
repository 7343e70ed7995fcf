#include "quant/quantize.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "quant_test_support.h"
#include "runtime/error.h"

namespace ethereal::quant {
namespace {

using ::testing::HasSubstr;
using testing::heavy_tailed_values;
using testing::normal_values;

struct Size {
  std::int64_t rows, cols;
};

// Odd sizes: rows that straddle nf4 blocks, partial last blocks, more than one absmax group.
const Size kSizes[] = {{5, 17}, {37, 130}, {64, 200}, {3, 12800}};

enum class Distribution { normal, heavy_tailed };

std::vector<float> weight_values(const Size& size, Distribution distribution, std::uint32_t seed) {
  const auto count = static_cast<std::size_t>(size.rows * size.cols);
  return distribution == Distribution::normal ? normal_values(count, seed)
                                              : heavy_tailed_values(count, seed);
}

const char* distribution_name(Distribution distribution) {
  return distribution == Distribution::normal ? "normal" : "heavy-tailed";
}

float row_amax(const std::vector<float>& values, const Size& size, std::int64_t row) {
  float amax = 0.0f;
  for (std::int64_t k = 0; k < size.cols; ++k) {
    amax = std::max(amax, std::fabs(values[static_cast<std::size_t>(row * size.cols + k)]));
  }
  return amax;
}

// int8: |W - dequantised| <= scale / 2 per element (plus f32 rounding of the product), with
// scale = row amax / 127, and every nonzero row uses code +-127 for its largest value.
void check_int8_round_trip(Distribution distribution) {
  std::uint32_t seed = 100;
  for (const Size& size : kSizes) {
    const auto values = weight_values(size, distribution, ++seed);
    const Tensor weight = Tensor::from_floats(values, {size.rows, size.cols});
    const QuantizedWeight q = quantize_int8(weight);
    const auto restored = dequantize(q).to_floats();
    const auto scales = q.scales.to_floats();
    const auto* codes = q.values.data_as<const std::int8_t>();
    const std::string label =
        fmt::format("{} [{}, {}]", distribution_name(distribution), size.rows, size.cols);
    for (std::int64_t n = 0; n < size.rows; ++n) {
      const float scale = scales[static_cast<std::size_t>(n)];
      EXPECT_FLOAT_EQ(scale, row_amax(values, size, n) / 127.0f) << label << " row " << n;
      int largest_code = 0;
      for (std::int64_t k = 0; k < size.cols; ++k) {
        const auto i = static_cast<std::size_t>(n * size.cols + k);
        ASSERT_LE(std::fabs(values[i] - restored[i]), scale * (0.5f + 1e-5f))
            << label << " element [" << n << ", " << k << "]";
        largest_code = std::max(largest_code, std::abs(static_cast<int>(codes[i])));
      }
      EXPECT_EQ(largest_code, 127) << label << " row " << n;
    }
  }
}

TEST(QuantizeInt8, RoundTripNormal) {
  check_int8_round_trip(Distribution::normal);
}

TEST(QuantizeInt8, RoundTripHeavyTailed) {
  check_int8_round_trip(Distribution::heavy_tailed);
}

// fp8 e4m3: relative error <= 2^-4 (half a unit in the last of 3 mantissa bits) where |W| /
// scale >= 2^-6 (the normal range of e4m3); absolute error <= 2^-10 * scale (half the subnormal
// spacing 2^-9) below it. scale = amax / 448 over the row or the tensor.
void check_fp8_round_trip(Distribution distribution, ScaleGranularity granularity) {
  std::uint32_t seed = 200;
  const bool per_tensor = granularity == ScaleGranularity::per_tensor;
  for (const Size& size : kSizes) {
    const auto values = weight_values(size, distribution, ++seed);
    const Tensor weight = Tensor::from_floats(values, {size.rows, size.cols});
    const QuantizedWeight q = quantize_fp8_e4m3(weight, granularity);
    ASSERT_EQ(q.scales.numel(), per_tensor ? 1 : size.rows);
    const auto restored = dequantize(q).to_floats();
    const auto scales = q.scales.to_floats();
    float tensor_amax = 0.0f;
    for (float value : values) {
      tensor_amax = std::max(tensor_amax, std::fabs(value));
    }
    const std::string label =
        fmt::format("{} {} [{}, {}]", distribution_name(distribution),
                    per_tensor ? "per tensor" : "per channel", size.rows, size.cols);
    for (std::int64_t n = 0; n < size.rows; ++n) {
      const float scale = scales[per_tensor ? 0 : static_cast<std::size_t>(n)];
      const float amax = per_tensor ? tensor_amax : row_amax(values, size, n);
      EXPECT_FLOAT_EQ(scale, amax / 448.0f) << label << " row " << n;
      for (std::int64_t k = 0; k < size.cols; ++k) {
        const auto i = static_cast<std::size_t>(n * size.cols + k);
        const float error = std::fabs(values[i] - restored[i]);
        if (std::fabs(values[i]) / scale >= std::ldexp(1.0f, -6)) {
          ASSERT_LE(error, std::ldexp(std::fabs(values[i]), -4) * (1.0f + 1e-6f))
              << label << " element [" << n << ", " << k << "] = " << values[i];
        } else {
          ASSERT_LE(error, std::ldexp(scale, -10) * (1.0f + 1e-6f))
              << label << " element [" << n << ", " << k << "] = " << values[i];
        }
      }
    }
  }
}

TEST(QuantizeFp8, RoundTripNormalPerChannel) {
  check_fp8_round_trip(Distribution::normal, ScaleGranularity::per_channel);
}

TEST(QuantizeFp8, RoundTripHeavyTailedPerChannel) {
  check_fp8_round_trip(Distribution::heavy_tailed, ScaleGranularity::per_channel);
}

TEST(QuantizeFp8, RoundTripNormalPerTensor) {
  check_fp8_round_trip(Distribution::normal, ScaleGranularity::per_tensor);
}

TEST(QuantizeFp8, RoundTripHeavyTailedPerTensor) {
  check_fp8_round_trip(Distribution::heavy_tailed, ScaleGranularity::per_tensor);
}

// The largest gap between consecutive nf4 code values: between -1 and -0.6961928.
constexpr float kNf4LargestGap = 1.0f - 0.6961928009986877f;

// nf4: with a the true block absmax and a' the decoded one,
//   |a - a'| <= group_scale / 254 (the linear 8-bit map's half step), and
//   |W - dequantised| <= a' * largest_gap / 2 + max(0, a - a')
// (values beyond a' clip to the end codes). Small f32 rounding terms are added.
void check_nf4_round_trip(Distribution distribution) {
  std::uint32_t seed = 300;
  for (const Size& size : kSizes) {
    const auto values = weight_values(size, distribution, ++seed);
    const Tensor weight = Tensor::from_floats(values, {size.rows, size.cols});
    const QuantizedWeight q = quantize_nf4(weight);
    const auto restored = dequantize(q).to_floats();
    const auto decoded_absmax = nf4_block_absmax(q).to_floats();
    const auto group_scales = q.nf4.group_scales.to_floats();
    const std::string label =
        fmt::format("{} [{}, {}]", distribution_name(distribution), size.rows, size.cols);
    const auto count = static_cast<std::int64_t>(values.size());
    ASSERT_EQ(static_cast<std::int64_t>(decoded_absmax.size()), (count + 63) / 64) << label;
    for (std::int64_t b = 0; b * 64 < count; ++b) {
      float absmax = 0.0f;
      for (std::int64_t i = b * 64; i < std::min(count, b * 64 + 64); ++i) {
        absmax = std::max(absmax, std::fabs(values[static_cast<std::size_t>(i)]));
      }
      const float decoded = decoded_absmax[static_cast<std::size_t>(b)];
      const float group_scale = group_scales[static_cast<std::size_t>(b / 256)];
      ASSERT_LE(std::fabs(absmax - decoded),
                group_scale / 254.0f + 1e-6f * (group_scale + std::fabs(q.nf4.offset)))
          << label << " block " << b;
      const float bound =
          decoded * kNf4LargestGap / 2.0f + std::max(0.0f, absmax - decoded) + 1e-6f * absmax;
      for (std::int64_t i = b * 64; i < std::min(count, b * 64 + 64); ++i) {
        const auto index = static_cast<std::size_t>(i);
        ASSERT_LE(std::fabs(values[index] - restored[index]), bound)
            << label << " flat element " << i << " = " << values[index];
      }
    }
  }
}

TEST(QuantizeNf4, RoundTripNormal) {
  check_nf4_round_trip(Distribution::normal);
}

TEST(QuantizeNf4, RoundTripHeavyTailed) {
  check_nf4_round_trip(Distribution::heavy_tailed);
}

TEST(QuantizeNf4, NearestCodeWithinEachBlock) {
  // Dequantised values are codebook values times the decoded absmax, and the code chosen is the
  // nearest one: no other code of the block is closer to the original value.
  const Size size{7, 130};
  const auto values = normal_values(static_cast<std::size_t>(size.rows * size.cols), 41);
  const QuantizedWeight q = quantize_nf4(Tensor::from_floats(values, {size.rows, size.cols}));
  const auto restored = dequantize(q).to_floats();
  const auto absmax = nf4_block_absmax(q).to_floats();
  for (std::size_t i = 0; i < values.size(); ++i) {
    const float a = absmax[i / 64];
    const float chosen_error = std::fabs(values[i] - restored[i]);
    for (float code : kNf4Codebook) {
      ASSERT_LE(chosen_error, std::fabs(values[i] - code * a) + 1e-7f) << "flat element " << i;
    }
  }
}

TEST(QuantizeInt8, ExactBytes) {
  // Row 0: amax 2.54, scale 0.02 -> 1.0 / 0.02 = 50, -2.54 / 0.02 = -127, 0.3 / 0.02 = 15.
  // Row 1 is all zero: scale 1 and codes 0.
  const Tensor weight =
      Tensor::from_floats(std::vector<float>{1.0f, -2.54f, 0.3f, 0.0f, 0.0f, 0.0f}, {2, 3});
  const QuantizedWeight q = quantize_int8(weight);
  EXPECT_EQ(q.values.dtype(), DType::int8);
  EXPECT_EQ(q.values.shape(), (Shape{2, 3}));
  const auto* codes = q.values.data_as<const std::int8_t>();
  const std::vector<std::int8_t> bytes(codes, codes + 6);
  EXPECT_EQ(bytes, (std::vector<std::int8_t>{50, -127, 15, 0, 0, 0}));
  EXPECT_EQ(q.scales.to_floats(), (std::vector<float>{2.54f / 127.0f, 1.0f}));
}

TEST(QuantizeFp8, ExactBytesPerTensor) {
  // amax 448 gives scale 1, so the codes are the e4m3 encodings of the values themselves:
  // 448 = 0x7E, -1 = 0xB8, 2^-9 (smallest subnormal) = 0x01, 0.5 = 0x30, -448 = 0xFE, 3 = 0x44.
  const Tensor weight = Tensor::from_floats(
      std::vector<float>{448.0f, -1.0f, std::ldexp(1.0f, -9), 0.5f, -448.0f, 3.0f}, {2, 3});
  const QuantizedWeight q = quantize_fp8_e4m3(weight, ScaleGranularity::per_tensor);
  EXPECT_EQ(q.values.dtype(), DType::fp8_e4m3);
  const auto* codes = q.values.data_as<const std::uint8_t>();
  EXPECT_EQ(std::vector<std::uint8_t>(codes, codes + 6),
            (std::vector<std::uint8_t>{0x7E, 0xB8, 0x01, 0x30, 0xFE, 0x44}));
  EXPECT_EQ(q.scales.shape(), (Shape{1}));
  EXPECT_EQ(q.scales.to_floats(), (std::vector<float>{1.0f}));
}

TEST(QuantizeFp8, ExactBytesPerChannel) {
  // Row amax 2: scale 2 / 448; 2 -> 448 = 0x7E, 1 -> 224 = 0x76, -0.5 -> -112 = 0xEE.
  const Tensor weight = Tensor::from_floats(std::vector<float>{2.0f, 1.0f, -0.5f}, {1, 3});
  const QuantizedWeight q = quantize_fp8_e4m3(weight, ScaleGranularity::per_channel);
  const auto* codes = q.values.data_as<const std::uint8_t>();
  EXPECT_EQ(std::vector<std::uint8_t>(codes, codes + 3),
            (std::vector<std::uint8_t>{0x7E, 0x76, 0xEE}));
  EXPECT_EQ(q.scales.to_floats(), (std::vector<float>{2.0f / 448.0f}));
}

TEST(QuantizeNf4, ExactBytesOneBlock) {
  // One block with absmax 1: the offset is 1, the group scale 1 and the absmax code 128 (value
  // 0), so the decoded absmax is exactly 1. Codes in flat order: 15, 0, 7, 12, 8, 6, packed low
  // nibble first: 0x0F, 0xC7, 0x68.
  const Tensor weight = Tensor::from_floats(
      std::vector<float>{1.0f, -1.0f, 0.0f, kNf4Codebook[12], kNf4Codebook[8], kNf4Codebook[6]},
      {2, 3});
  const QuantizedWeight q = quantize_nf4(weight);
  EXPECT_EQ(q.values.dtype(), DType::packed4);
  EXPECT_EQ(q.values.shape(), (Shape{2, 3}));
  ASSERT_EQ(q.values.nbytes(), 3u);
  const auto* packed = q.values.data_as<const std::uint8_t>();
  EXPECT_EQ(std::vector<std::uint8_t>(packed, packed + 3),
            (std::vector<std::uint8_t>{0x0F, 0xC7, 0x68}));
  EXPECT_EQ(q.nf4.offset, 1.0f);
  EXPECT_EQ(q.nf4.absmax_codes.shape(), (Shape{1}));
  EXPECT_EQ(q.nf4.absmax_codes.data_as<const std::uint8_t>()[0], 128);
  EXPECT_EQ(q.nf4.group_scales.to_floats(), (std::vector<float>{1.0f}));
  EXPECT_EQ(dequantize(q).to_floats(), weight.to_floats());
}

TEST(QuantizeNf4, CodeMapIsLinear) {
  const QuantizedWeight q =
      quantize_nf4(Tensor::from_floats(std::vector<float>{0.5f, -0.25f}, {1, 2}));
  const auto map = q.nf4.code_map.to_floats();
  ASSERT_EQ(map.size(), 256u);
  EXPECT_FLOAT_EQ(map[1], -1.0f);
  EXPECT_FLOAT_EQ(map[128], 0.0f);
  EXPECT_FLOAT_EQ(map[255], 1.0f);
  for (int code = 1; code < 256; ++code) {
    EXPECT_FLOAT_EQ(map[static_cast<std::size_t>(code)], (code - 128) / 127.0f);
  }
}

TEST(QuantizeNf4, BlocksFollowFlatOrderAcrossRows) {
  // [3, 50]: 150 elements in blocks [0, 64), [64, 128), [128, 150). Each block is filled with
  // one value v_b (1, 2, 4 times 0.01), so each element decodes to code 15 (value 1.0) times its
  // block's absmax, wherever the row boundaries fall.
  const float block_values[3] = {0.01f, 0.02f, 0.04f};
  std::vector<float> values(150);
  for (std::size_t i = 0; i < values.size(); ++i) {
    values[i] = block_values[i / 64];
  }
  const QuantizedWeight q = quantize_nf4(Tensor::from_floats(values, {3, 50}));
  ASSERT_EQ(q.nf4.absmax_codes.numel(), 3);
  ASSERT_EQ(q.nf4.group_scales.numel(), 1);
  // Offset = mean absmax; group scale = largest |absmax - offset|.
  const float offset = (0.01f + 0.02f + 0.04f) / 3.0f;
  EXPECT_NEAR(q.nf4.offset, offset, 1e-8f);
  EXPECT_NEAR(q.nf4.group_scales.to_floats()[0], 0.04f - offset, 1e-8f);
  const auto* packed = q.values.data_as<const std::uint8_t>();
  for (std::size_t byte = 0; byte < 75; ++byte) {
    ASSERT_EQ(packed[byte], 0xFF) << "byte " << byte;
  }
  const auto restored = dequantize(q).to_floats();
  const auto absmax = nf4_block_absmax(q).to_floats();
  for (std::size_t i = 0; i < values.size(); ++i) {
    ASSERT_EQ(restored[i], absmax[i / 64]) << "flat element " << i;
    ASSERT_NEAR(restored[i], values[i], q.nf4.group_scales.to_floats()[0] / 254.0f + 1e-7f)
        << "flat element " << i;
  }
}

TEST(QuantizeNf4, OddElementUsesHighNibble) {
  // [1, 3]: element 0 = 1.0 (code 15), element 1 = -1.0 (code 0), element 2 = 1.0: the third
  // element starts byte 1 in its low nibble; the unused high nibble is zero.
  const QuantizedWeight q =
      quantize_nf4(Tensor::from_floats(std::vector<float>{1.0f, -1.0f, 1.0f}, {1, 3}));
  ASSERT_EQ(q.values.nbytes(), 2u);
  const auto* packed = q.values.data_as<const std::uint8_t>();
  EXPECT_EQ(packed[0], 0x0F);
  EXPECT_EQ(packed[1], 0x0F);
}

TEST(QuantizeNf4, AbsmaxGroupsOf256Blocks) {
  // 3 x 12800 = 38400 elements = 600 blocks = groups of 256, 256 and 88 blocks.
  const Size size{3, 12800};
  const auto values = heavy_tailed_values(static_cast<std::size_t>(size.rows * size.cols), 7);
  const QuantizedWeight q = quantize_nf4(Tensor::from_floats(values, {size.rows, size.cols}));
  ASSERT_EQ(q.nf4.absmax_codes.numel(), 600);
  ASSERT_EQ(q.nf4.group_scales.numel(), 3);
  std::vector<double> absmax(600, 0.0);
  for (std::size_t i = 0; i < values.size(); ++i) {
    absmax[i / 64] = std::max(absmax[i / 64], static_cast<double>(std::fabs(values[i])));
  }
  double mean = 0.0;
  for (double a : absmax) {
    mean += a / 600.0;
  }
  EXPECT_NEAR(q.nf4.offset, mean, 1e-6 * mean);
  const auto group_scales = q.nf4.group_scales.to_floats();
  for (int g = 0; g < 3; ++g) {
    double spread = 0.0;
    for (int b = g * 256; b < std::min(600, g * 256 + 256); ++b) {
      spread = std::max(spread, std::fabs(absmax[static_cast<std::size_t>(b)] - q.nf4.offset));
    }
    EXPECT_NEAR(group_scales[static_cast<std::size_t>(g)], spread, 1e-6 * spread) << "group " << g;
  }
}

TEST(Quantize, Bf16InputMatchesF32Input) {
  const auto values = testing::rounded_to_bf16(normal_values(37 * 130, 9));
  const Tensor f32 = Tensor::from_floats(values, {37, 130});
  const Tensor bf16 = Tensor::from_floats(values, {37, 130}, DType::bf16);
  for (QuantFormat format : {QuantFormat::fp8_e4m3, QuantFormat::nf4, QuantFormat::int8}) {
    const QuantizedWeight a = quantize(f32, format);
    const QuantizedWeight b = quantize(bf16, format);
    ASSERT_EQ(a.values.nbytes(), b.values.nbytes());
    EXPECT_EQ(std::memcmp(a.values.data(), b.values.data(), a.values.nbytes()), 0)
        << quant_format_name(format);
    EXPECT_EQ(dequantize(a).to_floats(), dequantize(b).to_floats()) << quant_format_name(format);
  }
}

TEST(Quantize, StridedInputMatchesContiguous) {
  const auto values = normal_values(130 * 37, 10);
  const Tensor transposed = Tensor::from_floats(values, {130, 37}).transpose(0, 1);
  const Tensor contiguous = transposed.contiguous();
  for (QuantFormat format : {QuantFormat::fp8_e4m3, QuantFormat::nf4, QuantFormat::int8}) {
    EXPECT_EQ(dequantize(quantize(transposed, format)).to_floats(),
              dequantize(quantize(contiguous, format)).to_floats())
        << quant_format_name(format);
  }
}

TEST(Quantize, Bf16DequantisationRoundsTheF32Values) {
  const auto values = normal_values(5 * 17, 11);
  const Tensor weight = Tensor::from_floats(values, {5, 17});
  for (QuantFormat format : {QuantFormat::fp8_e4m3, QuantFormat::nf4, QuantFormat::int8}) {
    const QuantizedWeight q = quantize(weight, format);
    EXPECT_EQ(dequantize(q, DType::bf16).to_floats(),
              testing::rounded_to_bf16(dequantize(q).to_floats()))
        << quant_format_name(format);
  }
}

TEST(Quantize, AllZeroWeightDequantisesToZero) {
  const Tensor weight = Tensor::zeros({3, 70}, DType::f32);
  for (QuantFormat format : {QuantFormat::fp8_e4m3, QuantFormat::nf4, QuantFormat::int8}) {
    const auto restored = dequantize(quantize(weight, format)).to_floats();
    EXPECT_EQ(restored, std::vector<float>(210, 0.0f)) << quant_format_name(format);
  }
}

TEST(Quantize, NbytesCountsEveryPart) {
  const Tensor weight = Tensor::from_floats(normal_values(3 * 12800, 12), {3, 12800});
  // 38400 int8 codes + 3 scales.
  EXPECT_EQ(quantize_int8(weight).nbytes(), 38400u + 3u * 4u);
  // 19200 packed bytes + 600 absmax codes + 3 group scales + 256 map entries.
  EXPECT_EQ(quantize_nf4(weight).nbytes(), 19200u + 600u + 3u * 4u + 256u * 4u);
  EXPECT_EQ(quantize_fp8_e4m3(weight, ScaleGranularity::per_tensor).nbytes(), 38400u + 4u);
}

TEST(Quantize, RejectsNonFiniteWeight) {
  std::vector<float> values(2 * 5, 0.5f);
  values[7] = std::numeric_limits<float>::quiet_NaN();
  const Tensor weight = Tensor::from_floats(values, {2, 5});
  for (QuantFormat format : {QuantFormat::fp8_e4m3, QuantFormat::nf4, QuantFormat::int8}) {
    try {
      quantize(weight, format);
      ADD_FAILURE() << "expected InvalidInputError for " << quant_format_name(format);
    } catch (const InvalidInputError& error) {
      EXPECT_THAT(error.what(), HasSubstr("weight element [1, 2] is nan"));
      EXPECT_THAT(error.what(), HasSubstr("finite"));
    }
  }
}

TEST(Quantize, RejectsNonFiniteBf16Weight) {
  std::vector<float> values(3 * 70, 0.25f);
  values[140 + 9] = -std::numeric_limits<float>::infinity();
  const Tensor weight = Tensor::from_floats(values, {3, 70}, DType::bf16);
  for (QuantFormat format : {QuantFormat::fp8_e4m3, QuantFormat::nf4, QuantFormat::int8}) {
    EXPECT_THAT([&] { quantize(weight, format); },
                ::testing::ThrowsMessage<InvalidInputError>(HasSubstr("[2, 9] is -inf")))
        << quant_format_name(format);
    EXPECT_THAT([&] { compute_scales(weight, format); },
                ::testing::ThrowsMessage<InvalidInputError>(HasSubstr("[2, 9] is -inf")))
        << quant_format_name(format);
  }
}

TEST(Quantize, RejectsWrongRankAndDtype) {
  const Tensor vector = Tensor::zeros({8}, DType::f32);
  EXPECT_THAT([&] { quantize_int8(vector); },
              ::testing::ThrowsMessage<InvalidInputError>(HasSubstr("expected a 2-D tensor")));
  const Tensor integers = Tensor::zeros({2, 2}, DType::int32);
  EXPECT_THAT([&] { quantize_nf4(integers); },
              ::testing::ThrowsMessage<InvalidInputError>(HasSubstr("expected f32, bf16 or f16")));
}

void expect_same_bytes(const Tensor& actual, const Tensor& expected, const std::string& label) {
  ASSERT_TRUE(actual.defined()) << label;
  ASSERT_EQ(actual.dtype(), expected.dtype()) << label;
  ASSERT_EQ(actual.shape(), expected.shape()) << label;
  EXPECT_EQ(std::memcmp(actual.data(), expected.data(), expected.nbytes()), 0) << label;
}

TEST(ComputeScales, MatchQuantize) {
  std::uint32_t seed = 300;
  for (const Size& size : kSizes) {
    const auto values = weight_values(size, Distribution::heavy_tailed, ++seed);
    const Tensor weight = Tensor::from_floats(values, {size.rows, size.cols}, DType::bf16);
    for (QuantFormat format : {QuantFormat::fp8_e4m3, QuantFormat::nf4, QuantFormat::int8}) {
      for (ScaleGranularity granularity :
           {ScaleGranularity::per_tensor, ScaleGranularity::per_channel}) {
        QuantizeOptions options;
        options.fp8_scales = granularity;
        const QuantizedWeight expected = quantize(weight, format, options);
        const QuantizedWeight scales = compute_scales(weight, format, options);
        const std::string label =
            fmt::format("{} [{}, {}] {}", quant_format_name(format), size.rows, size.cols,
                        granularity == ScaleGranularity::per_tensor ? "per tensor" : "per channel");
        EXPECT_FALSE(scales.values.defined()) << label;
        EXPECT_EQ(scales.out_features, size.rows) << label;
        EXPECT_EQ(scales.in_features, size.cols) << label;
        if (format == QuantFormat::nf4) {
          EXPECT_FALSE(scales.scales.defined()) << label;
          expect_same_bytes(scales.nf4.absmax_codes, expected.nf4.absmax_codes, label);
          expect_same_bytes(scales.nf4.group_scales, expected.nf4.group_scales, label);
          expect_same_bytes(scales.nf4.code_map, expected.nf4.code_map, label);
          EXPECT_EQ(std::bit_cast<std::uint32_t>(scales.nf4.offset),
                    std::bit_cast<std::uint32_t>(expected.nf4.offset))
              << label;
        } else {
          expect_same_bytes(scales.scales, expected.scales, label);
        }
      }
    }
  }
}

TEST(ComputeScales, DryRunAllocatesLikeRealRun) {
  for (QuantFormat format : {QuantFormat::fp8_e4m3, QuantFormat::nf4, QuantFormat::int8}) {
    const auto values = normal_values(37 * 130, 16);
    auto body = [&] {
      const Tensor weight = Tensor::from_floats(values, {37, 130}, DType::bf16);
      const QuantizedWeight q = compute_scales(weight, format);
      EXPECT_FALSE(q.values.defined());
    };
    const AllocatorStats real = testing::stats_of_run(false, body);
    const AllocatorStats dry = testing::stats_of_run(true, body);
    SCOPED_TRACE(quant_format_name(format));
    testing::expect_same_statistics(real, dry);
  }
}

TEST(QuantFormat, NamesRoundTrip) {
  for (QuantFormat format : {QuantFormat::fp8_e4m3, QuantFormat::nf4, QuantFormat::int8}) {
    EXPECT_EQ(parse_quant_format(quant_format_name(format)), format);
  }
  EXPECT_THAT([] { parse_quant_format("q4_0"); },
              ::testing::ThrowsMessage<InvalidInputError>(
                  HasSubstr("\"q4_0\": expected one of fp8_e4m3, nf4, int8")));
}

TEST(QuantFormat, ValidateNamesTheBadField) {
  QuantizedWeight q = quantize_int8(Tensor::from_floats(normal_values(6, 13), {2, 3}));
  q.scales = Tensor::zeros({3}, DType::f32);
  EXPECT_THAT([&] { validate(q, "blocks.0.attn.to_q.weight"); },
              ::testing::ThrowsMessage<InvalidInputError>(::testing::AllOf(
                  HasSubstr("blocks.0.attn.to_q.weight"), HasSubstr("field scales"),
                  HasSubstr("f32[3]"), HasSubstr("expected a contiguous f32[2] tensor"))));

  QuantizedWeight nf4 = quantize_nf4(Tensor::from_floats(normal_values(6, 14), {2, 3}));
  nf4.nf4.code_map = Tensor::zeros({16}, DType::f32);
  EXPECT_THAT([&] { validate(nf4); },
              ::testing::ThrowsMessage<InvalidInputError>(HasSubstr("field nf4.code_map")));
}

TEST(Quantize, DryRunAllocatesLikeRealRun) {
  for (QuantFormat format : {QuantFormat::fp8_e4m3, QuantFormat::nf4, QuantFormat::int8}) {
    const auto values = normal_values(37 * 130, 15);
    auto body = [&] {
      const Tensor weight = Tensor::from_floats(values, {37, 130}, DType::bf16);
      const QuantizedWeight q = quantize(weight, format);
      const Tensor restored = dequantize(q, DType::bf16);
      EXPECT_EQ(restored.shape(), (Shape{37, 130}));
    };
    const AllocatorStats real = testing::stats_of_run(false, body);
    const AllocatorStats dry = testing::stats_of_run(true, body);
    SCOPED_TRACE(quant_format_name(format));
    testing::expect_same_statistics(real, dry);
  }
}

}  // namespace
}  // namespace ethereal::quant
