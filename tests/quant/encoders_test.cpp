#include "quant/encoders.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "runtime/dtype.h"

namespace ethereal::quant {
namespace {

constexpr float kInfinity = std::numeric_limits<float>::infinity();

using Fp8Encoder = void (*)(const float*, std::int64_t, float, std::uint8_t*);
using Int8Encoder = void (*)(const float*, std::int64_t, float, std::int8_t*);
using Nf4Encoder = void (*)(const float*, std::int64_t, float, std::uint8_t*);

template <typename Encoder>
struct Named {
  const char* name;
  Encoder encode;
};

// Every path the build has: the dispatching function and the loops behind it.
std::vector<Named<Fp8Encoder>> fp8_encoders() {
  std::vector<Named<Fp8Encoder>> result = {{"encode_fp8_e4m3", encode_fp8_e4m3},
                                           {"portable", detail::encode_fp8_e4m3_portable}};
#if defined(ETHEREAL_QUANT_AVX512)
  result.push_back({"avx512", detail::encode_fp8_e4m3_avx512});
#endif
  return result;
}

std::vector<Named<Int8Encoder>> int8_encoders() {
  std::vector<Named<Int8Encoder>> result = {{"encode_int8", encode_int8},
                                            {"portable", detail::encode_int8_portable}};
#if defined(ETHEREAL_QUANT_AVX512)
  result.push_back({"avx512", detail::encode_int8_avx512});
#endif
  return result;
}

std::vector<Named<Nf4Encoder>> nf4_encoders() {
  std::vector<Named<Nf4Encoder>> result = {{"encode_nf4", encode_nf4},
                                           {"portable", detail::encode_nf4_portable}};
#if defined(ETHEREAL_QUANT_AVX512)
  result.push_back({"avx512", detail::encode_nf4_avx512});
#endif
  return result;
}

std::string describe(float value) {
  return fmt::format("{:a} ({})", value, value);
}

// Adds x, its two float neighbours and the negatives of all three.
void add_with_neighbours(std::vector<float>& values, float x) {
  for (const float y : {x, std::nextafter(x, kInfinity), std::nextafter(x, -kInfinity)}) {
    values.push_back(y);
    values.push_back(-y);
  }
}

// Code values, midpoints between consecutive codes (the rounding ties), the saturation range,
// the subnormal range and zeros, each with its neighbours and both signs.
std::vector<float> fp8_boundary_values() {
  std::vector<float> values;
  for (std::uint8_t code = 0; code <= 0x7E; ++code) {
    const float value = fp8_e4m3_to_f32(code);
    add_with_neighbours(values, value);
    if (code < 0x7E) {
      const float next = fp8_e4m3_to_f32(static_cast<std::uint8_t>(code + 1));
      add_with_neighbours(values, (value + next) / 2.0f);
    }
  }
  for (const float x : {448.0f, 456.0f, 464.0f, 472.0f, 480.0f, 496.0f, 512.0f, 1.0e4f, 1.0e30f,
                        std::numeric_limits<float>::max()}) {
    add_with_neighbours(values, x);
  }
  // 2^-9 is the smallest subnormal, 2^-10 half of it (a tie with zero), 2^-6 the smallest
  // normal; 7.5 * 2^-9 is the tie between the largest subnormal and 2^-6.
  for (const float x :
       {std::ldexp(1.0f, -9), std::ldexp(1.0f, -10), std::ldexp(1.0f, -11), std::ldexp(3.0f, -10),
        std::ldexp(1.0f, -6), std::ldexp(7.5f, -9), std::numeric_limits<float>::min(),
        std::numeric_limits<float>::denorm_min(), 0.0f}) {
    add_with_neighbours(values, x);
  }
  values.push_back(kInfinity);
  values.push_back(-kInfinity);
  values.push_back(std::numeric_limits<float>::quiet_NaN());
  values.push_back(-std::numeric_limits<float>::quiet_NaN());
  return values;
}

// Floats with a random sign and mantissa and an exponent uniform in [min_exponent,
// max_exponent], so that every magnitude range gets as many values.
std::vector<float> random_magnitudes(std::size_t count, int min_exponent, int max_exponent,
                                     std::uint32_t seed) {
  std::mt19937 generator(seed);
  std::uniform_int_distribution<int> exponent(min_exponent, max_exponent);
  std::uniform_int_distribution<std::uint32_t> mantissa(0, (1u << 23) - 1);
  std::bernoulli_distribution negative(0.5);
  std::vector<float> values(count);
  for (float& value : values) {
    const auto biased = static_cast<std::uint32_t>(exponent(generator) + 127);
    value = std::bit_cast<float>((negative(generator) ? 0x80000000u : 0u) | (biased << 23) |
                                 mantissa(generator));
  }
  return values;
}

int nf4_nibble(const std::vector<std::uint8_t>& packed, std::size_t i) {
  const std::uint8_t byte = packed[i / 2];
  return i % 2 == 0 ? (byte & 0x0F) : (byte >> 4);
}

void expect_fp8_matches_scalar(const std::vector<float>& values, float scale) {
  for (const auto& encoder : fp8_encoders()) {
    std::vector<std::uint8_t> codes(values.size());
    encoder.encode(values.data(), static_cast<std::int64_t>(values.size()), scale, codes.data());
    for (std::size_t i = 0; i < values.size(); ++i) {
      ASSERT_EQ(codes[i], f32_to_fp8_e4m3(values[i] / scale))
          << encoder.name << ": " << describe(values[i]) << " / " << describe(scale);
    }
  }
}

std::int8_t int8_reference(float quotient) {
  return static_cast<std::int8_t>(std::clamp(std::nearbyint(quotient), -127.0f, 127.0f));
}

void expect_int8_matches_scalar(const std::vector<float>& values, float scale) {
  for (const auto& encoder : int8_encoders()) {
    std::vector<std::int8_t> codes(values.size());
    encoder.encode(values.data(), static_cast<std::int64_t>(values.size()), scale, codes.data());
    for (std::size_t i = 0; i < values.size(); ++i) {
      ASSERT_EQ(codes[i], int8_reference(values[i] / scale))
          << encoder.name << ": " << describe(values[i]) << " / " << describe(scale);
    }
  }
}

// Encodes in blocks of 64 values, as the quantiser does.
void expect_nf4_matches_scalar(const std::vector<float>& values, float absmax) {
  for (const auto& encoder : nf4_encoders()) {
    std::vector<std::uint8_t> packed((values.size() + 1) / 2);
    for (std::size_t first = 0; first < values.size(); first += 64) {
      const auto count =
          static_cast<std::int64_t>(std::min<std::size_t>(64, values.size() - first));
      encoder.encode(values.data() + first, count, absmax, packed.data() + first / 2);
    }
    for (std::size_t i = 0; i < values.size(); ++i) {
      ASSERT_EQ(nf4_nibble(packed, i), nearest_nf4_code(values[i] / absmax))
          << encoder.name << ": " << describe(values[i]) << " / " << describe(absmax);
    }
  }
}

TEST(Fp8Encoder, KnownCodes) {
  // 464 is the tie between 448 (0x7E) and 480, which e4m3fn lacks: it saturates like everything
  // above. 2^-10 is the tie between 0 and 2^-9 (goes to even 0), 3 * 2^-10 between codes 1 and
  // 2 (goes to even 2).
  const std::vector<float> values = {464.0f,
                                     -1000.0f,
                                     std::ldexp(1.0f, -10),
                                     std::nextafter(std::ldexp(1.0f, -10), 1.0f),
                                     std::ldexp(3.0f, -10),
                                     -0.0f,
                                     1.0f,
                                     kInfinity};
  const std::vector<std::uint8_t> expected = {0x7E, 0xFE, 0x00, 0x01, 0x02, 0x80, 0x38, 0x7E};
  for (const auto& encoder : fp8_encoders()) {
    std::vector<std::uint8_t> codes(values.size());
    encoder.encode(values.data(), static_cast<std::int64_t>(values.size()), 1.0f, codes.data());
    EXPECT_EQ(codes, expected) << encoder.name;
  }
}

TEST(Fp8Encoder, MatchesScalarAtBoundaries) {
  expect_fp8_matches_scalar(fp8_boundary_values(), 1.0f);
}

TEST(Fp8Encoder, BitsFunctionMatchesScalar) {
  for (const float value : fp8_boundary_values()) {
    ASSERT_EQ(fp8_e4m3_bits(value), f32_to_fp8_e4m3(value)) << describe(value);
  }
}

TEST(Fp8Encoder, MatchesScalarOnRandomValues) {
  // Exponents from the smallest f32 normal (2^-126), far below fp8's subnormals, to far above
  // 448.
  expect_fp8_matches_scalar(random_magnitudes(4'000'000, -126, 30, 1), 1.0f);
}

TEST(Fp8Encoder, MatchesScalarAfterDivision) {
  // Scales as the quantiser computes them (amax / 448), with quotients near every code.
  const std::vector<float> values = random_magnitudes(1'000'000, -20, 2, 2);
  for (const float amax : {1.0f, 0.0731f, 3.3e-5f, 17.5f}) {
    expect_fp8_matches_scalar(values, amax / 448.0f);
  }
}

TEST(Fp8Encoder, TailsWriteOnlyTheirCount) {
  // Counts around the 16-value vector width, from an odd address.
  const std::vector<float> source = random_magnitudes(80, -8, 8, 3);
  for (const auto& encoder : fp8_encoders()) {
    for (std::int64_t count = 0; count <= 40; ++count) {
      std::vector<std::uint8_t> codes(64, 0xA5);
      encoder.encode(source.data() + 1, count, 0.5f, codes.data() + 1);
      ASSERT_EQ(codes[0], 0xA5) << encoder.name << " count " << count;
      for (std::int64_t i = 0; i < count; ++i) {
        ASSERT_EQ(codes[static_cast<std::size_t>(i + 1)], f32_to_fp8_e4m3(source[i + 1] / 0.5f))
            << encoder.name << " count " << count << " element " << i;
      }
      for (std::size_t i = static_cast<std::size_t>(count) + 1; i < codes.size(); ++i) {
        ASSERT_EQ(codes[i], 0xA5) << encoder.name << " count " << count << " byte " << i;
      }
    }
  }
}

TEST(Int8Encoder, MatchesScalarAtTies) {
  // Every half-integer is a tie (rounds to even), and +-127.5, +-128 and beyond clamp.
  std::vector<float> values;
  for (int k = -140; k <= 140; ++k) {
    add_with_neighbours(values, static_cast<float>(k) + 0.5f);
    add_with_neighbours(values, static_cast<float>(k));
  }
  for (const float x : {1.0e6f, 3.0e38f, std::numeric_limits<float>::denorm_min(), 0.0f}) {
    add_with_neighbours(values, x);
  }
  values.push_back(kInfinity);
  values.push_back(-kInfinity);
  expect_int8_matches_scalar(values, 1.0f);
}

TEST(Int8Encoder, MatchesScalarOnRandomValues) {
  expect_int8_matches_scalar(random_magnitudes(2'000'000, -10, 8, 4), 1.0f);
  const std::vector<float> values = random_magnitudes(1'000'000, -20, 2, 5);
  for (const float amax : {1.0f, 0.0731f, 3.3e-5f}) {
    expect_int8_matches_scalar(values, amax / 127.0f);
  }
}

TEST(Int8Encoder, TailsWriteOnlyTheirCount) {
  const std::vector<float> source = random_magnitudes(80, -4, 8, 6);
  for (const auto& encoder : int8_encoders()) {
    for (std::int64_t count = 0; count <= 40; ++count) {
      std::vector<std::int8_t> codes(64, 0x55);
      encoder.encode(source.data() + 1, count, 2.0f, codes.data() + 1);
      ASSERT_EQ(codes[0], 0x55) << encoder.name << " count " << count;
      for (std::int64_t i = 0; i < count; ++i) {
        ASSERT_EQ(codes[static_cast<std::size_t>(i + 1)], int8_reference(source[i + 1] / 2.0f))
            << encoder.name << " count " << count << " element " << i;
      }
      for (std::size_t i = static_cast<std::size_t>(count) + 1; i < codes.size(); ++i) {
        ASSERT_EQ(codes[i], 0x55) << encoder.name << " count " << count << " byte " << i;
      }
    }
  }
}

TEST(Nf4Encoder, MidpointTiesGoToLowerCode) {
  for (std::size_t j = 0; j < kNf4Midpoints.size(); ++j) {
    const float midpoint = kNf4Midpoints[j];
    EXPECT_EQ(nearest_nf4_code(midpoint), static_cast<int>(j)) << describe(midpoint);
    EXPECT_EQ(nearest_nf4_code(std::nextafter(midpoint, kInfinity)), static_cast<int>(j) + 1)
        << describe(midpoint);
  }
}

TEST(Nf4Encoder, MatchesScalarAroundMidpoints) {
  std::vector<float> values;
  for (const float midpoint : kNf4Midpoints) {
    add_with_neighbours(values, midpoint);
  }
  for (const float code : kNf4Codebook) {
    add_with_neighbours(values, code);
  }
  for (const float x : {1.5f, 1.0e30f, std::numeric_limits<float>::denorm_min(), 0.0f}) {
    add_with_neighbours(values, x);
  }
  values.push_back(kInfinity);
  values.push_back(-kInfinity);
  expect_nf4_matches_scalar(values, 1.0f);
}

TEST(Nf4Encoder, MatchesScalarOnRandomValues) {
  // Normalised values mostly in [-1, 1], as block absmax division gives, some beyond.
  std::mt19937 generator(7);
  std::uniform_real_distribution<float> uniform(-1.1f, 1.1f);
  std::vector<float> values(2'000'000);
  for (float& value : values) {
    value = uniform(generator);
  }
  expect_nf4_matches_scalar(values, 1.0f);
  const std::vector<float> weights = random_magnitudes(1'000'000, -12, 0, 8);
  for (const float absmax : {1.0f, 0.37f, 2.9e-3f}) {
    expect_nf4_matches_scalar(weights, absmax);
  }
}

TEST(Nf4Encoder, OddCountLeavesHighNibbleZero) {
  const std::vector<float> source = random_magnitudes(80, -4, 0, 9);
  for (const auto& encoder : nf4_encoders()) {
    for (std::int64_t count = 1; count <= 40; ++count) {
      const auto bytes = static_cast<std::size_t>((count + 1) / 2);
      std::vector<std::uint8_t> packed(32, 0xA5);
      encoder.encode(source.data(), count, 0.8f, packed.data());
      for (std::int64_t i = 0; i < count; ++i) {
        ASSERT_EQ(nf4_nibble(packed, static_cast<std::size_t>(i)),
                  nearest_nf4_code(source[i] / 0.8f))
            << encoder.name << " count " << count << " element " << i;
      }
      if (count % 2 != 0) {
        EXPECT_EQ(packed[bytes - 1] >> 4, 0) << encoder.name << " count " << count;
      }
      for (std::size_t i = bytes; i < packed.size(); ++i) {
        ASSERT_EQ(packed[i], 0xA5) << encoder.name << " count " << count << " byte " << i;
      }
    }
  }
}

}  // namespace
}  // namespace ethereal::quant
