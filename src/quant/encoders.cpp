#include "quant/encoders.h"

#include <algorithm>
#include <bit>

namespace ethereal::quant {

namespace {

// 1.5 * 2^23: adding it to a float of magnitude at most 2^22 rounds the sum to an integer (ties
// to even), and the low bits of the sum's pattern are that integer.
constexpr float kRoundingMagic = 12582912.0f;
constexpr std::int32_t kRoundingMagicBits = 0x4B400000;

// clamp(nearbyint(quotient), -127, 127). Clamping first gives the same result, because -127
// and 127 are integers, and keeps the sum below 2^22 for the rounding trick.
std::int8_t int8_code(float quotient) {
  const float clamped = std::min(std::max(quotient, -127.0f), 127.0f);
  return static_cast<std::int8_t>(std::bit_cast<std::int32_t>(clamped + kRoundingMagic) -
                                  kRoundingMagicBits);
}

}  // namespace

namespace detail {

void encode_fp8_e4m3_portable(const float* values, std::int64_t count, float scale,
                              std::uint8_t* out) {
  for (std::int64_t i = 0; i < count; ++i) {
    out[i] = fp8_e4m3_bits(values[i] / scale);
  }
}

void encode_int8_portable(const float* values, std::int64_t count, float scale, std::int8_t* out) {
  for (std::int64_t i = 0; i < count; ++i) {
    out[i] = int8_code(values[i] / scale);
  }
}

void encode_nf4_portable(const float* values, std::int64_t count, float absmax,
                         std::uint8_t* packed) {
  // Batches of 64 values. The loop over midpoints is the outer one, so that the inner loop is
  // a plain compare-and-add over the batch, which compilers vectorise.
  constexpr std::int64_t kBatch = 64;
  for (std::int64_t first = 0; first < count; first += kBatch) {
    const std::int64_t size = std::min(kBatch, count - first);
    float normalised[kBatch];
    std::uint8_t codes[kBatch + 1];
    for (std::int64_t i = 0; i < size; ++i) {
      normalised[i] = values[first + i] / absmax;
      codes[i] = 0;
    }
    for (float midpoint : kNf4Midpoints) {
      for (std::int64_t i = 0; i < size; ++i) {
        codes[i] += normalised[i] > midpoint ? 1 : 0;
      }
    }
    codes[size] = 0;  // the high nibble after an odd count
    std::uint8_t* out = packed + first / 2;
    for (std::int64_t j = 0; 2 * j < size; ++j) {
      out[j] = static_cast<std::uint8_t>(codes[2 * j] | (codes[2 * j + 1] << 4));
    }
  }
}

#if defined(ETHEREAL_QUANT_AVX512)

// The AVX-512 loops use the zero-masking forms of intrinsics with every lane selected (kAll16),
// for the reason given in weight_decoder.h.

namespace {

// fp8_e4m3_bits of 16 floats, as the low byte of each 32-bit lane.
__m512i fp8_e4m3_bits16(__m512 value) {
  const __m512i bits = _mm512_castps_si512(value);
  const __m512i sign =
      _mm512_and_si512(_mm512_maskz_srli_epi32(kAll16, bits, 24), _mm512_set1_epi32(0x80));
  const __m512i magnitude = _mm512_and_si512(bits, _mm512_set1_epi32(0x7FFFFFFF));

  const __m512i odd =
      _mm512_and_si512(_mm512_maskz_srli_epi32(kAll16, magnitude, 20), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_maskz_srli_epi32(
      kAll16, _mm512_add_epi32(magnitude, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFFF))), 20);
  const __m512i normal = _mm512_maskz_min_epu32(
      kAll16, _mm512_sub_epi32(rounded, _mm512_set1_epi32(120 << 3)), _mm512_set1_epi32(0x7E));

  const __m512 shifted = _mm512_add_ps(_mm512_castsi512_ps(magnitude), _mm512_set1_ps(16384.0f));
  const __m512i subnormal =
      _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_set1_epi32(0x46800000));

  const __mmask16 below_normal = _mm512_cmplt_epu32_mask(magnitude, _mm512_set1_epi32(0x3C800000));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(magnitude, _mm512_set1_epi32(0x7F800000));
  __m512i code = _mm512_mask_blend_epi32(below_normal, normal, subnormal);
  code = _mm512_mask_blend_epi32(nan, code, _mm512_set1_epi32(0x7F));
  return _mm512_or_si512(code, sign);
}

// The nf4 midpoints in lanes 0 ... 14; lane 15 is never indexed. A constant in memory, because
// building it on the stack before loading it as one vector stalls the load.
alignas(64) constexpr std::array<float, 16> kMidpointTable = [] {
  std::array<float, 16> table{};
  std::copy(kNf4Midpoints.begin(), kNf4Midpoints.end(), table.begin());
  return table;
}();

}  // namespace

void encode_fp8_e4m3_avx512(const float* values, std::int64_t count, float scale,
                            std::uint8_t* out) {
  const __m512 divisor = _mm512_set1_ps(scale);
  std::int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m512 quotient = _mm512_div_ps(_mm512_loadu_ps(values + i), divisor);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm512_maskz_cvtepi32_epi8(kAll16, fp8_e4m3_bits16(quotient)));
  }
  if (i < count) {
    const auto tail = static_cast<__mmask16>((1u << (count - i)) - 1u);
    const __m512 quotient = _mm512_div_ps(_mm512_maskz_loadu_ps(tail, values + i), divisor);
    _mm_mask_storeu_epi8(out + i, tail,
                         _mm512_maskz_cvtepi32_epi8(kAll16, fp8_e4m3_bits16(quotient)));
  }
}

void encode_int8_avx512(const float* values, std::int64_t count, float scale, std::int8_t* out) {
  const __m512 divisor = _mm512_set1_ps(scale);
  const __m512 low = _mm512_set1_ps(-127.0f);
  const __m512 high = _mm512_set1_ps(127.0f);
  // The clamp comes first, as in int8_code; then one conversion rounds to nearest even.
  const auto codes16 = [&](__m512 value) {
    const __m512 clamped = _mm512_maskz_min_ps(
        kAll16, _mm512_maskz_max_ps(kAll16, _mm512_div_ps(value, divisor), low), high);
    return _mm512_maskz_cvtepi32_epi8(
        kAll16, _mm512_maskz_cvt_roundps_epi32(kAll16, clamped,
                                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  };
  std::int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), codes16(_mm512_loadu_ps(values + i)));
  }
  if (i < count) {
    const auto tail = static_cast<__mmask16>((1u << (count - i)) - 1u);
    _mm_mask_storeu_epi8(out + i, tail, codes16(_mm512_maskz_loadu_ps(tail, values + i)));
  }
}

void encode_nf4_avx512(const float* values, std::int64_t count, float absmax,
                       std::uint8_t* packed) {
  const __m512 divisor = _mm512_set1_ps(absmax);
  const __m512 midpoints = _mm512_load_ps(kMidpointTable.data());
  // Shifting the odd lanes' codes left by 4 and OR-ing each 64-bit pair of lanes into its low
  // lane puts byte j's two nibbles in the low byte of 64-bit lane j.
  const __m512i nibble_shift = _mm512_set_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
  std::int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m512 normalised = _mm512_div_ps(_mm512_loadu_ps(values + i), divisor);
    // Binary search for the number of midpoints below each value. The midpoints increase, so
    // code >= c exactly when the value is above midpoint c - 1; the steps try c = code + 8, 4, 2
    // and 1. This equals nearest_nf4_code's count of 15 comparisons.
    __m512i codes = _mm512_setzero_si512();
    for (const int step : {8, 4, 2, 1}) {
      const __m512i below = _mm512_add_epi32(codes, _mm512_set1_epi32(step - 1));
      const __m512 midpoint = _mm512_maskz_permutexvar_ps(kAll16, below, midpoints);
      const __mmask16 above = _mm512_cmp_ps_mask(normalised, midpoint, _CMP_GT_OQ);
      codes = _mm512_mask_add_epi32(codes, above, codes, _mm512_set1_epi32(step));
    }
    const __m512i shifted = _mm512_maskz_sllv_epi32(kAll16, codes, nibble_shift);
    const __m512i pairs = _mm512_or_si512(shifted, _mm512_maskz_srli_epi64(0xFF, shifted, 32));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(packed + i / 2),
                     _mm512_maskz_cvtepi64_epi8(0xFF, pairs));
  }
  // i is a multiple of 16, so the rest starts on a byte.
  encode_nf4_portable(values + i, count - i, absmax, packed + i / 2);
}

#endif  // ETHEREAL_QUANT_AVX512

}  // namespace detail

void encode_fp8_e4m3(const float* values, std::int64_t count, float scale, std::uint8_t* out) {
#if defined(ETHEREAL_QUANT_AVX512)
  detail::encode_fp8_e4m3_avx512(values, count, scale, out);
#else
  detail::encode_fp8_e4m3_portable(values, count, scale, out);
#endif
}

void encode_int8(const float* values, std::int64_t count, float scale, std::int8_t* out) {
#if defined(ETHEREAL_QUANT_AVX512)
  detail::encode_int8_avx512(values, count, scale, out);
#else
  detail::encode_int8_portable(values, count, scale, out);
#endif
}

void encode_nf4(const float* values, std::int64_t count, float absmax, std::uint8_t* packed) {
#if defined(ETHEREAL_QUANT_AVX512)
  detail::encode_nf4_avx512(values, count, absmax, packed);
#else
  detail::encode_nf4_portable(values, count, absmax, packed);
#endif
}

}  // namespace ethereal::quant
