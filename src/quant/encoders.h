// Array encoders of the quantiser: fp8_e4m3, int8 and nf4 codes of values divided by a scale.
//
// Each encoder gives, for every finite input, the same bits as the scalar definition next to it:
//   fp8_e4m3: f32_to_fp8_e4m3(value / scale), round to nearest even, saturating at +-448;
//   int8:     clamp(nearbyint(value / scale), -127, 127);
//   nf4:      nearest_nf4_code(value / absmax).
// The division is an IEEE division in every path, because a multiplication by the reciprocal
// rounds differently for some inputs. Builds with AVX-512 (ETHEREAL_QUANT_AVX512) run 16 values
// per instruction; the portable loops use integer bit operations that compilers vectorise.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>

#include "quant/quant_format.h"
#include "quant/weight_decoder.h"

namespace ethereal::quant {

// Midpoints between consecutive nf4 code values: a value above midpoint j rounds to code j + 1.
inline constexpr std::array<float, 15> kNf4Midpoints = [] {
  std::array<float, 15> result{};
  for (std::size_t j = 0; j < result.size(); ++j) {
    result[j] = (kNf4Codebook[j] + kNf4Codebook[j + 1]) / 2.0f;
  }
  return result;
}();

// Returns the nearest nf4 code of `normalised`, a weight divided by its block absmax. A tie goes
// to the lower code, and a value outside [-1, 1] to the end code on its side. This scalar form
// is the definition the array encoder reproduces.
inline int nearest_nf4_code(float normalised) {
  int code = 0;
  for (float midpoint : kNf4Midpoints) {
    code += normalised > midpoint ? 1 : 0;
  }
  return code;
}

// Returns the fp8 e4m3fn bits of `value` with integer bit operations and one f32 addition,
// equal to f32_to_fp8_e4m3(value) for every input, NaN and infinity included.
inline std::uint8_t fp8_e4m3_bits(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const std::uint32_t sign = (bits >> 24) & 0x80u;
  const std::uint32_t magnitude = bits & 0x7FFFFFFFu;

  // Normal e4m3 values (magnitude >= 2^-6): round the f32 bits to 3 mantissa bits, ties to even.
  // A carry out of the mantissa moves to the exponent, as it should. Subtracting the exponent
  // bias difference (127 - 7) << 3 gives the e4m3 bits, saturated at 0x7E (448).
  const std::uint32_t rounded = (magnitude + 0x7FFFFu + ((magnitude >> 20) & 1u)) >> 20;
  const std::uint32_t normal = std::min(rounded - (120u << 3), 0x7Eu);

  // Below 2^-6 the e4m3 spacing is 2^-9, which is the f32 spacing at 2^14. Adding 2^14 makes
  // the f32 addition round |value| to that spacing (ties to even), and the low bits of the sum
  // are the e4m3 bits: 0 ... 7 for subnormals, 8 when the rounding reaches 2^-6.
  const std::uint32_t subnormal =
      std::bit_cast<std::uint32_t>(std::bit_cast<float>(magnitude) + 16384.0f) - 0x46800000u;

  // Selects with masks rather than branches, so that compilers vectorise the loops that call
  // this function (they do not move the float addition into a branch of its own).
  const std::uint32_t below_normal = 0u - static_cast<std::uint32_t>(magnitude < 0x3C800000u);
  const std::uint32_t nan = 0u - static_cast<std::uint32_t>(magnitude > 0x7F800000u);
  const std::uint32_t code = (subnormal & below_normal) | (normal & ~below_normal);
  return static_cast<std::uint8_t>(sign | (code & ~nan) | (0x7Fu & nan));
}

// Writes f32_to_fp8_e4m3(values[i] / scale) to out[i] for i < count.
void encode_fp8_e4m3(const float* values, std::int64_t count, float scale, std::uint8_t* out);

// Writes clamp(nearbyint(values[i] / scale), -127, 127) to out[i] for i < count.
void encode_int8(const float* values, std::int64_t count, float scale, std::int8_t* out);

// Packs nearest_nf4_code(values[i] / absmax) for i < count two per byte, low nibble first, into
// (count + 1) / 2 bytes. With an odd count the high nibble of the last byte is 0.
void encode_nf4(const float* values, std::int64_t count, float absmax, std::uint8_t* packed);

namespace detail {

// The portable loops, which the functions above run in builds without AVX-512.
void encode_fp8_e4m3_portable(const float* values, std::int64_t count, float scale,
                              std::uint8_t* out);
void encode_int8_portable(const float* values, std::int64_t count, float scale, std::int8_t* out);
void encode_nf4_portable(const float* values, std::int64_t count, float absmax,
                         std::uint8_t* packed);

#if defined(ETHEREAL_QUANT_AVX512)
// The AVX-512 loops, which the functions above run in builds with ETHEREAL_QUANT_AVX512.
void encode_fp8_e4m3_avx512(const float* values, std::int64_t count, float scale,
                            std::uint8_t* out);
void encode_int8_avx512(const float* values, std::int64_t count, float scale, std::int8_t* out);
void encode_nf4_avx512(const float* values, std::int64_t count, float absmax, std::uint8_t* packed);
#endif

}  // namespace detail

}  // namespace ethereal::quant
