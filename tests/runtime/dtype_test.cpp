#include "runtime/dtype.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "runtime/error.h"

namespace ethereal {
namespace {

float from_bits(std::uint32_t bits) {
  return std::bit_cast<float>(bits);
}

TEST(Bf16Conversion, RoundsToNearestEven) {
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties go to the even 1.0.
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  // 1 + 3 * 2^-8 is halfway between 1.0078125 (odd) and 1.015625 (even): rounds up.
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  // Just above halfway rounds up.
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F808001)), 0x3F81);
  EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0xC000), -2.0f);
}

TEST(Bf16Conversion, KeepsSpecialValues) {
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  // The largest finite f32 rounds up to infinity in bf16, as in PyTorch.
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);
}

TEST(F16Conversion, MatchesKnownPatterns) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3C00);
  EXPECT_EQ(f32_to_f16(-2.5f), 0xC100);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);  // halfway to 65536 rounds to even: infinity
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie with zero goes to even zero
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -26)), 0x0001);  // above the tie rounds up
  EXPECT_EQ(f32_to_f16(std::ldexp(1023.0f, -24) + std::ldexp(1.0f, -25)), 0x0400);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x3555), 0.333251953125f);
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7C00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7E00)));
}

TEST(F16Conversion, RoundTripsEveryFinitePattern) {
  for (std::uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float value = f16_to_f32(static_cast<std::uint16_t>(bits));
    if (std::isnan(value)) {
      continue;
    }
    ASSERT_EQ(f32_to_f16(value), bits) << "pattern " << bits;
  }
}

TEST(Fp8E4m3Conversion, SaturatesWithoutInfinity) {
  EXPECT_EQ(fp8_e4m3_to_f32(0x7E), 448.0f);
  EXPECT_EQ(f32_to_fp8_e4m3(448.0f), 0x7E);
  EXPECT_EQ(f32_to_fp8_e4m3(1000.0f), 0x7E);
  EXPECT_EQ(f32_to_fp8_e4m3(-1e30f), 0xFE);
  EXPECT_EQ(f32_to_fp8_e4m3(std::numeric_limits<float>::infinity()), 0x7E);
  EXPECT_EQ(f32_to_fp8_e4m3(std::numeric_limits<float>::quiet_NaN()) & 0x7F, 0x7F);
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_f32(0x7F)));
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_f32(0xFF)));
  // 464 is halfway between 448 and the next step (480, not representable): saturates.
  EXPECT_EQ(f32_to_fp8_e4m3(464.0f), 0x7E);
}

TEST(Fp8E4m3Conversion, RoundsToNearestEven) {
  EXPECT_EQ(f32_to_fp8_e4m3(1.0f), 0x38);
  EXPECT_EQ(fp8_e4m3_to_f32(0x39), 1.125f);
  EXPECT_EQ(f32_to_fp8_e4m3(1.0625f), 0x38);                // tie between 1.0 (even) and 1.125
  EXPECT_EQ(f32_to_fp8_e4m3(1.1875f), 0x3A);                // tie between 1.125 and 1.25 (even)
  EXPECT_EQ(fp8_e4m3_to_f32(0x01), std::ldexp(1.0f, -9));   // smallest subnormal
  EXPECT_EQ(f32_to_fp8_e4m3(std::ldexp(1.0f, -10)), 0x00);  // tie with zero
  EXPECT_EQ(f32_to_fp8_e4m3(std::ldexp(1.5f, -10)), 0x01);
}

TEST(Fp8E4m3Conversion, RoundTripsEveryFinitePattern) {
  for (std::uint32_t bits = 0; bits < 256; ++bits) {
    const float value = fp8_e4m3_to_f32(static_cast<std::uint8_t>(bits));
    if (std::isnan(value)) {
      continue;
    }
    ASSERT_EQ(f32_to_fp8_e4m3(value), bits) << "pattern " << bits;
  }
}

TEST(Fp8E5m2Conversion, FollowsIeeeRules) {
  EXPECT_EQ(fp8_e5m2_to_f32(0x7B), 57344.0f);
  EXPECT_EQ(f32_to_fp8_e5m2(57344.0f), 0x7B);
  EXPECT_EQ(f32_to_fp8_e5m2(1e6f), 0x7C);  // overflow to infinity
  EXPECT_TRUE(std::isinf(fp8_e5m2_to_f32(0x7C)));
  EXPECT_TRUE(std::isnan(fp8_e5m2_to_f32(0x7D)));
  for (std::uint32_t bits = 0; bits < 256; ++bits) {
    const float value = fp8_e5m2_to_f32(static_cast<std::uint8_t>(bits));
    if (std::isnan(value)) {
      continue;
    }
    ASSERT_EQ(f32_to_fp8_e5m2(value), bits) << "pattern " << bits;
  }
}

TEST(ConvertElements, ConvertsBetweenTypes) {
  const std::vector<float> input = {-300.0f, -1.5f, -0.5f, 0.5f, 1.5f, 2.5f, 300.0f};
  std::vector<std::int8_t> as_int8(input.size());
  convert_elements(input.data(), DType::f32, as_int8.data(), DType::int8, input.size());
  EXPECT_EQ(as_int8, (std::vector<std::int8_t>{-128, -2, 0, 0, 2, 2, 127}));

  std::vector<std::uint16_t> as_bf16(input.size());
  convert_elements(input.data(), DType::f32, as_bf16.data(), DType::bf16, input.size());
  std::vector<float> back(input.size());
  convert_elements(as_bf16.data(), DType::bf16, back.data(), DType::f32, input.size());
  EXPECT_EQ(back, input);

  const std::vector<std::int64_t> big = {(std::int64_t{1} << 40) + 1, -5};
  std::vector<std::int32_t> narrowed(2);
  convert_elements(big.data(), DType::int64, narrowed.data(), DType::int32, 2);
  EXPECT_EQ(narrowed[0], std::numeric_limits<std::int32_t>::max());
  EXPECT_EQ(narrowed[1], -5);
}

TEST(DTypeNames, ParseAndSizes) {
  EXPECT_EQ(parse_dtype("fp8_e4m3"), DType::fp8_e4m3);
  EXPECT_EQ(dtype_name(DType::bf16), "bf16");
  EXPECT_EQ(dtype_bytes(DType::packed4, 3), 2u);
  EXPECT_EQ(dtype_bytes(DType::int64, 3), 24u);
  try {
    parse_dtype("float99");
    FAIL() << "parse_dtype accepted an unknown name";
  } catch (const InvalidInputError& error) {
    EXPECT_NE(std::string(error.what()).find("float99"), std::string::npos);
  }
}

}  // namespace
}  // namespace ethereal
