// Decoding of quantised weights element by element and 32 at a time, shared by dequantize(),
// the packed-layout dequantiser and the direct small-batch kernel.
//
// Every path computes a dequantised value with the same single f32 multiplication, so they
// agree bit for bit:
//   fp8_e4m3, int8: code_value * row_scale
//   nf4:            kNf4Codebook[code] * block_absmax
// A bf16 result is that f32 value rounded to nearest even. A caller may pass a `multiplier` in
// place of the row scale, for example 1 for the unscaled code values. For nf4 it must be 1 to
// keep the rounding above.
//
// NOTE: the 32-wide fp8 decoder maps the two NaN codes (0x7F, 0xFF) to +-480 * scale instead
// of NaN. The quantiser never writes them, because it rejects non-finite weights.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "quant/quant_format.h"
#include "runtime/dtype.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512BF16__)
#define ETHEREAL_QUANT_AVX512 1
#include <immintrin.h>
#endif

namespace ethereal::quant::detail {

// Elements decoded together by decode32 (one zmm register of bf16).
inline constexpr std::int64_t kChunk = 32;

// Rounds to nearest even, like f32_to_bf16, but inline for the scalar loops.
inline std::uint16_t to_bf16_bits(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
    return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
  }
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(bits >> 16);
}

inline float bf16_bits_to_f32(std::uint16_t bits) {
  const std::uint32_t wide = static_cast<std::uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

// Raw pointers into a QuantizedWeight (which must be validated and not dry) for inner loops.
struct WeightView {
  QuantFormat format = QuantFormat::int8;
  std::int64_t out_features = 0;
  std::int64_t in_features = 0;
  const std::uint8_t* values = nullptr;
  const float* scales = nullptr;  // fp8 and int8
  bool per_channel = true;        // fp8 and int8
  const std::uint8_t* absmax_codes = nullptr;
  const float* group_scales = nullptr;
  const float* code_map = nullptr;
  float offset = 0.0f;

  explicit WeightView(const QuantizedWeight& weight)
      : format(weight.format),
        out_features(weight.out_features),
        in_features(weight.in_features),
        values(static_cast<const std::uint8_t*>(weight.values.data())) {
    if (format == QuantFormat::nf4) {
      absmax_codes = weight.nf4.absmax_codes.data_as<const std::uint8_t>();
      group_scales = weight.nf4.group_scales.data_as<const float>();
      code_map = weight.nf4.code_map.data_as<const float>();
      offset = weight.nf4.offset;
    } else {
      scales = weight.scales.data_as<const float>();
      per_channel = weight.scales.numel() != 1;
    }
  }

  // The scale of row n's codes: fp8 and int8 scale, 1 for nf4 (whose scales are per block).
  float row_scale(std::int64_t n) const {
    if (format == QuantFormat::nf4) {
      return 1.0f;
    }
    return per_channel ? scales[n] : scales[0];
  }

  float block_absmax(std::int64_t block) const {
    return std::fma(code_map[absmax_codes[block]], group_scales[block / kNf4AbsmaxGroupSize],
                    offset);
  }

  // The value of W[n, k] divided by row_scale(n).
  float unscaled(std::int64_t n, std::int64_t k) const {
    const std::int64_t index = n * in_features + k;
    switch (format) {
      case QuantFormat::fp8_e4m3: return fp8_e4m3_to_f32(values[index]);
      case QuantFormat::int8: return static_cast<float>(static_cast<std::int8_t>(values[index]));
      case QuantFormat::nf4: {
        const std::uint8_t byte = values[index / 2];
        const int code = (index % 2 == 0) ? (byte & 0x0F) : (byte >> 4);
        return kNf4Codebook[static_cast<std::size_t>(code)] * block_absmax(index / kNf4BlockSize);
      }
    }
    return 0.0f;
  }

  float value(std::int64_t n, std::int64_t k) const { return unscaled(n, k) * row_scale(n); }

  // True when decode32 may read W[n, k0 ... k0 + 31]: inside the row and, for nf4, starting on
  // a byte and inside one block (the flat index is a multiple of 32).
  bool can_decode32(std::int64_t n, std::int64_t k0) const {
    if (k0 + kChunk > in_features) {
      return false;
    }
    return format != QuantFormat::nf4 || (n * in_features + k0) % kChunk == 0;
  }
};

// W[n, k0 + j] * multiplier as bf16 bits for j < count, zero for count <= j < 32.
inline void decode32_scalar(const WeightView& w, std::int64_t n, std::int64_t k0, int count,
                            float multiplier, std::uint16_t* out) {
  for (int j = 0; j < kChunk; ++j) {
    out[j] = j < count ? to_bf16_bits(w.unscaled(n, k0 + j) * multiplier) : 0;
  }
}

#if defined(ETHEREAL_QUANT_AVX512)

// All 16 lanes selected. GCC 12 reports the undefined pass-through operand of the plain forms
// of some AVX-512 intrinsics as uninitialized wherever they are inlined. The zero-masking forms
// with every lane selected compile to the same instructions without that warning.
inline constexpr __mmask16 kAll16 = 0xFFFF;

// W[n, k0 ... k0 + 31] * multiplier as 32 bf16 values for a weight of format F. Requires
// w.can_decode32(n, k0).
template <QuantFormat F>
inline __m512i decode32_as(const WeightView& w, std::int64_t n, std::int64_t k0, float multiplier) {
  const std::int64_t index = n * w.in_features + k0;
  if constexpr (F == QuantFormat::int8) {
    const auto* p = reinterpret_cast<const __m128i*>(w.values + index);
    const __m512 scale = _mm512_set1_ps(multiplier);
    const __m512i low = _mm512_maskz_cvtepi8_epi32(kAll16, _mm_loadu_si128(p));
    const __m512i high = _mm512_maskz_cvtepi8_epi32(kAll16, _mm_loadu_si128(p + 1));
    return (__m512i)_mm512_cvtne2ps_pbh(
        _mm512_mul_ps(_mm512_maskz_cvtepi32_ps(kAll16, high), scale),
        _mm512_mul_ps(_mm512_maskz_cvtepi32_ps(kAll16, low), scale));
  } else if constexpr (F == QuantFormat::fp8_e4m3) {
    // Moving the 7 exponent-and-mantissa bits of e4m3 into an f16 (bits 13..7) gives the
    // same value times 2^-8, subnormals included, so 256 goes into the multiplier. The codes
    // are sign-extended to 16 bits, so after the shift by 7 bit 15 is the sign bit.
    const __m512i words = _mm512_cvtepi8_epi16(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.values + index)));
    const __m512i half = _mm512_and_si512(_mm512_slli_epi16(words, 7),
                                          _mm512_set1_epi16(static_cast<short>(0xBF80)));
    const __m512 scale = _mm512_set1_ps(multiplier * 256.0f);
    const __m512 low = _mm512_maskz_cvtph_ps(kAll16, _mm512_maskz_extracti64x4_epi64(0xF, half, 0));
    const __m512 high =
        _mm512_maskz_cvtph_ps(kAll16, _mm512_maskz_extracti64x4_epi64(0xF, half, 1));
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(high, scale), _mm512_mul_ps(low, scale));
  } else {
    // The 16 possible values of this block as bf16 form a table indexed by the codes.
    const float absmax = w.block_absmax(index / kNf4BlockSize) * multiplier;
    const __m512 codebook = _mm512_loadu_ps(kNf4Codebook.data());
    // Words 0 ... 15: the table; words 16 ... 31: zero (never indexed).
    const __m512i table = (__m512i)_mm512_cvtne2ps_pbh(
        _mm512_setzero_ps(), _mm512_mul_ps(codebook, _mm512_set1_ps(absmax)));
    // Byte j contains elements 2j (low nibble) and 2j + 1 (high nibble). Widened to 32 bits, byte
    // j becomes word 2j = its low nibble and word 2j + 1 = its high nibble (bits 12..15 of
    // word 2j keep a copy of the low nibble, but vpermw reads only bits 0..4 of an index).
    const __m512i bytes = _mm512_maskz_cvtepu8_epi32(
        kAll16, _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.values + index / 2)));
    const __m512i codes = _mm512_ternarylogic_epi32(
        _mm512_set1_epi32(0x0F), bytes, _mm512_maskz_slli_epi32(kAll16, bytes, 12), 0xCA);
    return _mm512_permutexvar_epi16(codes, table);
  }
}

// Like decode32_as, falling back to the scalar decoder (with zero fill) where it may not run.
template <QuantFormat F>
inline __m512i decode32_any_as(const WeightView& w, std::int64_t n, std::int64_t k0,
                               float multiplier) {
  if (w.can_decode32(n, k0)) [[likely]] {
    return decode32_as<F>(w, n, k0, multiplier);
  }
  alignas(64) std::uint16_t buffer[kChunk];
  const std::int64_t remaining = w.in_features - k0;
  const int count = static_cast<int>(remaining < kChunk ? remaining : kChunk);
  decode32_scalar(w, n, k0, count > 0 ? count : 0, multiplier, buffer);
  return _mm512_load_si512(buffer);
}

// Address of the byte that contains W[n, k] in format F, for prefetching.
template <QuantFormat F>
inline const std::uint8_t* element_address(const WeightView& w, std::int64_t n, std::int64_t k) {
  const std::int64_t index = n * w.in_features + k;
  return w.values + (F == QuantFormat::nf4 ? index / 2 : index);
}

// Calls fn(std::integral_constant<QuantFormat, F>{}) for the weight's format, so that
// loops over many chunks dispatch on the format once.
template <typename Fn>
decltype(auto) dispatch_format(QuantFormat format, Fn&& fn) {
  switch (format) {
    case QuantFormat::int8: return fn(std::integral_constant<QuantFormat, QuantFormat::int8>{});
    case QuantFormat::fp8_e4m3:
      return fn(std::integral_constant<QuantFormat, QuantFormat::fp8_e4m3>{});
    case QuantFormat::nf4: break;
  }
  return fn(std::integral_constant<QuantFormat, QuantFormat::nf4>{});
}

#endif  // ETHEREAL_QUANT_AVX512

}  // namespace ethereal::quant::detail
