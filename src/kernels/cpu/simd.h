// Sixteen-lane f32 vectors shared by the element-wise, normalisation and attention kernels.
//
// Kernels are written once against `Vec16`: with AVX-512 (F, BW and VL) it wraps one __m512
// register. Otherwise it is an array of 16 floats with plain loops, so the library also builds
// with -DETHEREAL_NATIVE=OFF. Activations are stored as f32 or bf16 (raw uint16 bits). Loads
// widen bf16 to f32 exactly, and stores round f32 to bf16 to nearest, ties to even, and keep NaN a
// NaN. All arithmetic is f32.
//
// Accuracy of the transcendental functions with AVX-512 (the fallback uses <cmath>), measured
// against double precision on a dense sweep:
//   exp:  relative error below 8e-8 (1.3 ulp) for x in [-87, 88]. Results below the normal
//         range are subnormal or 0, and x > 88.7 gives +inf.
//   exp2: relative error below 2.3e-7 (4 ulp) for x in [-126, 127], with 0 or +inf outside.
//   erf:  absolute error below 5e-7 (the formula 7.1.26 of Abramowitz and Stegun, whose own
//         error bound is 1.5e-7, evaluated in f32).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define ETHEREAL_SIMD_AVX512 1
// GCC 12 reports the deliberately undefined pass-through operand inside its own AVX-512
// intrinsics (_mm512_undefined_*) as maybe-uninitialized wherever they are inlined.
#include <immintrin.h>
#endif

namespace ethereal::cpu::simd {

// A bf16 value as its raw bit pattern.
using bf16_t = std::uint16_t;

inline constexpr int kLanes = 16;

// Scalar conversions, inline so that loops over them can be vectorised.
inline float to_f32(float value) {
  return value;
}
inline float to_f32(bf16_t bits) {
  const std::uint32_t wide = static_cast<std::uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

template <typename T>
T from_f32(float value);
template <>
inline float from_f32<float>(float value) {
  return value;
}
// Rounds to nearest, ties to even. A NaN stays a (quiet) NaN.
template <>
inline bf16_t from_f32<bf16_t>(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
    return static_cast<bf16_t>((bits >> 16) | 0x40u);
  }
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<bf16_t>(bits >> 16);
}

#if defined(ETHEREAL_SIMD_AVX512)

namespace detail {

// GCC 12 reports the undefined pass-through operand inside the plain forms of some AVX-512
// intrinsics as maybe-uninitialized wherever they are inlined. These wrappers call the
// zero-masking forms with every lane selected, which compile to the same instructions.
constexpr __mmask16 kAllLanes = 0xFFFF;

inline __m512 max_ps(__m512 a, __m512 b) {
  return _mm512_maskz_max_ps(kAllLanes, a, b);
}
inline __m512 min_ps(__m512 a, __m512 b) {
  return _mm512_maskz_min_ps(kAllLanes, a, b);
}
inline __m512 clamp_ps(__m512 x, float low, float high) {
  return min_ps(max_ps(x, _mm512_set1_ps(low)), _mm512_set1_ps(high));
}
inline __m512 round_nearest_ps(__m512 x) {
  return _mm512_maskz_roundscale_ps(kAllLanes, x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
// x * 2^n for integral n, exact including subnormal results, overflow to inf and underflow to 0.
inline __m512 scale_by_power_of_two(__m512 x, __m512 n) {
  return _mm512_maskz_scalef_ps(kAllLanes, x, n);
}
inline __m512i shift_right_16(__m512i x) {
  return _mm512_maskz_srli_epi32(kAllLanes, x, 16);
}
template <int Half>
inline __m256 half_ps(__m512 x) {
  return _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, _mm512_castps_pd(x), Half));
}
inline float reduce_add_ps(__m512 x) {
  const __m256 eight = _mm256_add_ps(half_ps<0>(x), half_ps<1>(x));
  const __m128 four = _mm_add_ps(_mm256_castps256_ps128(eight), _mm256_extractf128_ps(eight, 1));
  const __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
  return _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
}
inline float reduce_max_ps(__m512 x) {
  const __m256 eight = _mm256_max_ps(half_ps<0>(x), half_ps<1>(x));
  const __m128 four = _mm_max_ps(_mm256_castps256_ps128(eight), _mm256_extractf128_ps(eight, 1));
  const __m128 two = _mm_max_ps(four, _mm_movehl_ps(four, four));
  return _mm_cvtss_f32(_mm_max_ss(two, _mm_movehdup_ps(two)));
}

inline __mmask16 tail_mask(int count) {
  return static_cast<__mmask16>((1u << count) - 1u);
}

inline __m512 widen_bf16(__m256i bits) {
  const __m512i wide = _mm512_maskz_cvtepu16_epi32(kAllLanes, bits);
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAllLanes, wide, 16));
}

inline __m256i narrow_to_bf16(__m512 value) {
#if defined(__AVX512BF16__)
  return (__m256i)_mm512_cvtneps_pbh(value);
#else
  const __m512i bits = _mm512_castps_si512(value);
  const __m512i lsb = _mm512_and_si512(shift_right_16(bits), _mm512_set1_epi32(1));
  const __m512i bias = _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF));
  const __m512i rounded = shift_right_16(_mm512_add_epi32(bits, bias));
  // A NaN keeps its sign and top mantissa bits and is made quiet, so rounding cannot turn it
  // into an infinity.
  const __mmask16 nan = _mm512_cmp_ps_mask(value, value, _CMP_UNORD_Q);
  const __m512i quiet = _mm512_or_si512(shift_right_16(bits), _mm512_set1_epi32(0x40));
  return _mm512_maskz_cvtepi32_epi16(kAllLanes, _mm512_mask_mov_epi32(rounded, nan, quiet));
#endif
}

// Returns `result` with the lanes where `input` is NaN replaced by that NaN.
inline __m512 keep_nan(__m512 result, __m512 input) {
  return _mm512_mask_mov_ps(result, _mm512_cmp_ps_mask(input, input, _CMP_UNORD_Q), input);
}

}  // namespace detail

class Vec16 {
 public:
  __m512 v;

  Vec16() : v(_mm512_setzero_ps()) {}
  explicit Vec16(__m512 value) : v(value) {}
  explicit Vec16(float value) : v(_mm512_set1_ps(value)) {}

  static Vec16 load(const float* p) { return Vec16(_mm512_loadu_ps(p)); }
  static Vec16 load(const bf16_t* p) {
    return Vec16(detail::widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
  }
  // Loads the first `count` lanes (0..16) and zeroes the others.
  static Vec16 load(const float* p, int count) {
    return Vec16(_mm512_maskz_loadu_ps(detail::tail_mask(count), p));
  }
  static Vec16 load(const bf16_t* p, int count) {
    return Vec16(detail::widen_bf16(_mm256_maskz_loadu_epi16(detail::tail_mask(count), p)));
  }

  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void store(bf16_t* p) const {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), detail::narrow_to_bf16(v));
  }
  // Stores the first `count` lanes (0..16).
  void store(float* p, int count) const { _mm512_mask_storeu_ps(p, detail::tail_mask(count), v); }
  void store(bf16_t* p, int count) const {
    _mm256_mask_storeu_epi16(p, detail::tail_mask(count), detail::narrow_to_bf16(v));
  }

  friend Vec16 operator+(Vec16 a, Vec16 b) { return Vec16(_mm512_add_ps(a.v, b.v)); }
  friend Vec16 operator-(Vec16 a, Vec16 b) { return Vec16(_mm512_sub_ps(a.v, b.v)); }
  friend Vec16 operator*(Vec16 a, Vec16 b) { return Vec16(_mm512_mul_ps(a.v, b.v)); }
  friend Vec16 operator/(Vec16 a, Vec16 b) { return Vec16(_mm512_div_ps(a.v, b.v)); }
  Vec16& operator+=(Vec16 b) { return *this = *this + b; }
  Vec16& operator*=(Vec16 b) { return *this = *this * b; }
};

// a * b + c with one rounding.
inline Vec16 fma(Vec16 a, Vec16 b, Vec16 c) {
  return Vec16(_mm512_fmadd_ps(a.v, b.v, c.v));
}
inline Vec16 max(Vec16 a, Vec16 b) {
  return Vec16(detail::max_ps(a.v, b.v));
}
inline Vec16 min(Vec16 a, Vec16 b) {
  return Vec16(detail::min_ps(a.v, b.v));
}
inline float reduce_add(Vec16 a) {
  return detail::reduce_add_ps(a.v);
}
inline float reduce_max(Vec16 a) {
  return detail::reduce_max_ps(a.v);
}

// Keeps the first `count` lanes of `a` and zeroes the others.
inline Vec16 first_lanes(Vec16 a, int count) {
  return Vec16(_mm512_maskz_mov_ps(detail::tail_mask(count), a.v));
}

// Rounds every lane to the nearest bf16 value (ties to even) and widens it back to f32.
inline Vec16 round_to_bf16(Vec16 a) {
  return Vec16(detail::widen_bf16(detail::narrow_to_bf16(a.v)));
}

// Swaps the lanes of each adjacent pair: (a0, a1, a2, a3, ...) -> (a1, a0, a3, a2, ...).
inline Vec16 swap_pairs(Vec16 a) {
  return Vec16(_mm512_maskz_permute_ps(detail::kAllLanes, a.v, 0xB1));
}

// Loads `count` (0..8) floats and repeats each one twice: (p0, p0, p1, p1, ...). Lanes
// past 2 * count are zero.
inline Vec16 load_duplicated(const float* p, int count) {
  const __m512 half = _mm512_maskz_loadu_ps(detail::tail_mask(count), p);
  const __m512i index = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
  return Vec16(_mm512_maskz_permutexvar_ps(detail::kAllLanes, index, half));
}

// 2^f for f in [-0.5, 0.5]: Taylor series of e^(f ln 2) to degree 6 (error about 1.2e-7).
inline __m512 exp2_reduced(__m512 f) {
  __m512 p = _mm512_set1_ps(1.5403530393381606e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
  return _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
}

inline Vec16 exp2(Vec16 x) {
  // Clamping keeps f finite for +-inf inputs, so the scaling then produces 0 or +inf exactly.
  const __m512 clamped = detail::clamp_ps(x.v, -160.0f, 160.0f);
  const __m512 n = detail::round_nearest_ps(clamped);
  const __m512 f = _mm512_sub_ps(clamped, n);
  return Vec16(detail::keep_nan(detail::scale_by_power_of_two(exp2_reduced(f), n), x.v));
}

inline Vec16 exp(Vec16 x) {
  // e^x = 2^n * e^r with n = round(x / ln 2) and r = x - n ln 2, where ln 2 is split into two
  // constants (Cody and Waite) so that r keeps its accuracy for large |x|.
  const __m512 clamped = detail::clamp_ps(x.v, -110.0f, 110.0f);
  const __m512 n =
      detail::round_nearest_ps(_mm512_mul_ps(clamped, _mm512_set1_ps(1.4426950408889634f)));
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), clamped);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  // e^r for |r| <= 0.35: Taylor series to degree 7.
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return Vec16(detail::keep_nan(detail::scale_by_power_of_two(p, n), x.v));
}

inline Vec16 erf(Vec16 x) {
  const __m512 ax = _mm512_abs_ps(x.v);
  const __m512 t = _mm512_div_ps(
      _mm512_set1_ps(1.0f), _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), ax, _mm512_set1_ps(1.0f)));
  __m512 p = _mm512_set1_ps(1.061405429f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
  p = _mm512_mul_ps(p, t);
  const __m512 gauss = exp(Vec16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), ax), ax))).v;
  const __m512 magnitude = _mm512_fnmadd_ps(p, gauss, _mm512_set1_ps(1.0f));
  // Copy the sign of x onto the result (erf is odd).
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x.v), _mm512_set1_epi32(INT32_MIN));
  return Vec16(_mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(magnitude), sign)));
}

#else  // portable fallback

class Vec16 {
 public:
  float v[kLanes];

  Vec16() : v{} {}
  explicit Vec16(float value) {
    for (float& lane : v) {
      lane = value;
    }
  }

  template <typename T>
  static Vec16 load(const T* p) {
    Vec16 r;
    for (int i = 0; i < kLanes; ++i) {
      r.v[i] = to_f32(p[i]);
    }
    return r;
  }
  template <typename T>
  static Vec16 load(const T* p, int count) {
    Vec16 r;
    for (int i = 0; i < count; ++i) {
      r.v[i] = to_f32(p[i]);
    }
    return r;
  }
  template <typename T>
  void store(T* p) const {
    for (int i = 0; i < kLanes; ++i) {
      p[i] = from_f32<T>(v[i]);
    }
  }
  template <typename T>
  void store(T* p, int count) const {
    for (int i = 0; i < count; ++i) {
      p[i] = from_f32<T>(v[i]);
    }
  }

  template <typename Op>
  static Vec16 map(Vec16 a, Vec16 b, Op op) {
    Vec16 r;
    for (int i = 0; i < kLanes; ++i) {
      r.v[i] = op(a.v[i], b.v[i]);
    }
    return r;
  }
  friend Vec16 operator+(Vec16 a, Vec16 b) {
    return map(a, b, [](float x, float y) { return x + y; });
  }
  friend Vec16 operator-(Vec16 a, Vec16 b) {
    return map(a, b, [](float x, float y) { return x - y; });
  }
  friend Vec16 operator*(Vec16 a, Vec16 b) {
    return map(a, b, [](float x, float y) { return x * y; });
  }
  friend Vec16 operator/(Vec16 a, Vec16 b) {
    return map(a, b, [](float x, float y) { return x / y; });
  }
  Vec16& operator+=(Vec16 b) { return *this = *this + b; }
  Vec16& operator*=(Vec16 b) { return *this = *this * b; }
};

inline Vec16 fma(Vec16 a, Vec16 b, Vec16 c) {
  Vec16 r;
  for (int i = 0; i < kLanes; ++i) {
    r.v[i] = std::fma(a.v[i], b.v[i], c.v[i]);
  }
  return r;
}
inline Vec16 max(Vec16 a, Vec16 b) {
  return Vec16::map(a, b, [](float x, float y) { return x > y ? x : y; });
}
inline Vec16 min(Vec16 a, Vec16 b) {
  return Vec16::map(a, b, [](float x, float y) { return x < y ? x : y; });
}
inline float reduce_add(Vec16 a) {
  float sum = 0.0f;
  for (float lane : a.v) {
    sum += lane;
  }
  return sum;
}
inline float reduce_max(Vec16 a) {
  float best = a.v[0];
  for (float lane : a.v) {
    best = lane > best ? lane : best;
  }
  return best;
}
inline Vec16 swap_pairs(Vec16 a) {
  Vec16 r;
  for (int i = 0; i < kLanes; i += 2) {
    r.v[i] = a.v[i + 1];
    r.v[i + 1] = a.v[i];
  }
  return r;
}
inline Vec16 load_duplicated(const float* p, int count) {
  Vec16 r;
  for (int i = 0; i < count; ++i) {
    r.v[2 * i] = r.v[2 * i + 1] = p[i];
  }
  return r;
}
inline Vec16 first_lanes(Vec16 a, int count) {
  for (int i = count; i < kLanes; ++i) {
    a.v[i] = 0.0f;
  }
  return a;
}
inline Vec16 round_to_bf16(Vec16 a) {
  for (float& lane : a.v) {
    lane = to_f32(from_f32<bf16_t>(lane));
  }
  return a;
}
inline Vec16 exp2(Vec16 x) {
  for (float& lane : x.v) {
    lane = std::exp2(lane);
  }
  return x;
}
inline Vec16 exp(Vec16 x) {
  for (float& lane : x.v) {
    lane = std::exp(lane);
  }
  return x;
}
inline Vec16 erf(Vec16 x) {
  for (float& lane : x.v) {
    lane = std::erf(lane);
  }
  return x;
}

#endif

// Kernels process a row as full vectors followed by one partial vector. Returns the number of
// valid lanes of the chunk that starts at `index` in a row of `length` elements.
inline int chunk_lanes(std::int64_t index, std::int64_t length) {
  const std::int64_t left = length - index;
  return left >= kLanes ? kLanes : static_cast<int>(left);
}

template <typename T>
inline Vec16 load_chunk(const T* p, int count) {
  return count == kLanes ? Vec16::load(p) : Vec16::load(p, count);
}

template <typename T>
inline void store_chunk(T* p, Vec16 value, int count) {
  if (count == kLanes) {
    value.store(p);
  } else {
    value.store(p, count);
  }
}

}  // namespace ethereal::cpu::simd
