#include "quant/direct_linear.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/simd.h"
#include "quant/weight_decoder.h"
#include "runtime/parallel.h"

namespace ethereal::quant::detail {

namespace {

// Output channels per work item; tiles split them further into sub-groups.
constexpr std::int64_t kGroup = 8;
// Rows of the largest tile of input rows, and the most accumulators (rows x sub-group) a tile
// uses.
constexpr std::int64_t kMaxTileRows = 8;
constexpr int kMaxAccumulators = 16;

// The factor that turns a sum of direct values (see direct_linear.h) into the output.
float channel_factor(const WeightView& view, std::int64_t n) {
  switch (view.format) {
    case QuantFormat::fp8_e4m3: return view.row_scale(n) * 256.0f;
    case QuantFormat::int8: return view.row_scale(n);
    case QuantFormat::nf4: return 1.0f;
  }
  return 1.0f;
}

// Channels per sub-group for a tile of `tile_rows` rows. Each loaded input vector feeds the
// whole sub-group, because with one channel per sub-group (one load per vdpbf16ps) a Zen 4
// core ran at half the rate. The sub-group's decoded weights (2 registers per channel for
// 64-wide steps) and the accumulators together fit in the 32 vector registers.
constexpr int sub_group_for(int tile_rows) {
  if (tile_rows >= 8) {
    return 2;
  }
  if (tile_rows >= 2) {
    return 4;
  }
  return 8;
}
static_assert(sub_group_for(8) * 8 <= kMaxAccumulators && sub_group_for(4) * 4 <= kMaxAccumulators);

template <typename Element>
void store_value(float value, Element* destination) {
  if constexpr (sizeof(Element) == sizeof(float)) {
    *destination = value;
  } else {
    *destination = to_bf16_bits(value);
  }
}

// Adds the channel factor and the bias to a tile's sums [tile_rows][sub_group] and stores them
// as out[m0 + m, n0 + j] for the channels that exist.
template <typename Element>
void store_tile(const WeightView& view, const float* sums, int sub_group, std::int64_t m0,
                std::int64_t tile_rows, std::int64_t n0, const float* bias, Element* out) {
  const std::int64_t n_total = view.out_features;
  for (int j = 0; j < sub_group && n0 + j < n_total; ++j) {
    const std::int64_t n = n0 + j;
    const float factor = channel_factor(view, n);
    const float offset = bias != nullptr ? bias[n] : 0.0f;
    for (std::int64_t m = 0; m < tile_rows; ++m) {
      store_value(sums[m * sub_group + j] * factor + offset, out + (m0 + m) * n_total + n);
    }
  }
}

#if defined(ETHEREAL_QUANT_AVX512)

inline __m512bh as_bf16_vector(__m512i bits) {
  return (__m512bh)bits;
}

// fp8 v * 2^-8 as bf16, exactly: the sign goes to bit 15 and the 7 exponent-and-mantissa bits
// to bits 10..4 under the exponent prefix 0b0111, which rebiases e4m3's exponent (bias 7) to
// bf16's (bias 127) minus 8. Zero and subnormal codes (exponent bits 0) do not fit that
// pattern, so a chunk that contains one takes the f16 route of decode32_as.
inline __m512i fp8_direct32(const WeightView& w, std::int64_t n, std::int64_t k0) {
  const std::uint8_t* p = w.values + n * w.in_features + k0;
  const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  if (_mm256_testn_epi8_mask(bytes, _mm256_set1_epi8(0x78)) != 0) [[unlikely]] {
    return decode32_as<QuantFormat::fp8_e4m3>(w, n, k0, 1.0f / 256.0f);
  }
  const __m512i words = _mm512_cvtepu8_epi16(bytes);
  const __m512i magnitude =
      _mm512_and_si512(_mm512_slli_epi16(words, 4), _mm512_set1_epi16(0x07F0));
  const __m512i sign =
      _mm512_and_si512(_mm512_slli_epi16(words, 8), _mm512_set1_epi16(static_cast<short>(0x8000)));
  return _mm512_or_si512(_mm512_or_si512(magnitude, sign), _mm512_set1_epi16(0x3800));
}

// One nf4 block of 64 as its 32 even elements (low nibbles) and 32 odd elements (high nibbles).
inline void nf4_direct64(const WeightView& w, std::int64_t n, std::int64_t k0, __m512i parts[2]) {
  const std::int64_t index = n * w.in_features + k0;
  const float absmax = w.block_absmax(index / kNf4BlockSize);
  const __m512i table = (__m512i)_mm512_cvtne2ps_pbh(
      _mm512_setzero_ps(),
      _mm512_mul_ps(_mm512_loadu_ps(kNf4Codebook.data()), _mm512_set1_ps(absmax)));
  const __m512i words = _mm512_cvtepu8_epi16(
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.values + index / 2)));
  parts[0] = _mm512_permutexvar_epi16(_mm512_and_si512(words, _mm512_set1_epi16(0x0F)), table);
  parts[1] = _mm512_permutexvar_epi16(_mm512_srli_epi16(words, 4), table);
}

// Direct values of W[n, k0 ... k0 + Step - 1] in the order of the prepared input.
template <QuantFormat F, int Step>
inline void decode_step(const WeightView& w, std::int64_t n, std::int64_t k0,
                        __m512i parts[Step / 32]) {
  if constexpr (Step == 64) {
    // in_features is a multiple of 64: every chunk is whole and aligned.
    if constexpr (F == QuantFormat::nf4) {
      nf4_direct64(w, n, k0, parts);
    } else if constexpr (F == QuantFormat::fp8_e4m3) {
      parts[0] = fp8_direct32(w, n, k0);
      parts[1] = fp8_direct32(w, n, k0 + 32);
    } else {
      parts[0] = decode32_as<F>(w, n, k0, 1.0f);
      parts[1] = decode32_as<F>(w, n, k0 + 32, 1.0f);
    }
  } else if constexpr (F == QuantFormat::fp8_e4m3) {
    parts[0] = w.can_decode32(n, k0) ? fp8_direct32(w, n, k0)
                                     : decode32_any_as<F>(w, n, k0, 1.0f / 256.0f);
  } else {
    parts[0] = decode32_any_as<F>(w, n, k0, 1.0f);
  }
}

// sums[m * G + j] = sum over k of x[m, k] * direct value of channel n0 + j. Channels past the
// end of the weight repeat its last channel; store_tile skips them.
template <QuantFormat F, int Step, int G, int MB>
void tile_kernel(const WeightView& w, std::int64_t n0, const std::uint16_t* x,
                 std::int64_t padded_k, float* sums) {
  __m512 acc[G][MB];
  for (int j = 0; j < G; ++j) {
    for (int m = 0; m < MB; ++m) {
      acc[j][m] = _mm512_setzero_ps();
    }
  }
  const std::int64_t last_channel = w.out_features - 1;
  for (std::int64_t k0 = 0; k0 < padded_k; k0 += Step) {
    __m512i parts[G][Step / 32];
    for (int j = 0; j < G; ++j) {
      decode_step<F, Step>(w, std::min(n0 + j, last_channel), k0, parts[j]);
    }
    for (int s = 0; s < Step / 32; ++s) {
      for (int m = 0; m < MB; ++m) {
        const __m512bh input = as_bf16_vector(_mm512_loadu_si512(x + m * padded_k + k0 + 32 * s));
        for (int j = 0; j < G; ++j) {
          acc[j][m] = _mm512_dpbf16_ps(acc[j][m], input, as_bf16_vector(parts[j][s]));
        }
      }
    }
  }
  for (int j = 0; j < G; ++j) {
    for (int m = 0; m < MB; ++m) {
      sums[m * G + j] = cpu::simd::reduce_add(cpu::simd::Vec16(acc[j][m]));
    }
  }
}

using TileKernel = void (*)(const WeightView&, std::int64_t, const std::uint16_t*, std::int64_t,
                            float*);

template <QuantFormat F, int Step>
TileKernel tile_kernel_for(std::int64_t tile_rows) {
  switch (tile_rows) {
    case 8: return &tile_kernel<F, Step, sub_group_for(8), 8>;
    case 4: return &tile_kernel<F, Step, sub_group_for(4), 4>;
    case 2: return &tile_kernel<F, Step, sub_group_for(2), 2>;
    default: return &tile_kernel<F, Step, sub_group_for(1), 1>;
  }
}

TileKernel select_kernel(QuantFormat format, std::int64_t step, std::int64_t tile_rows) {
  return dispatch_format(format, [&](auto constant) {
    constexpr QuantFormat F = decltype(constant)::value;
    return step == 64 ? tile_kernel_for<F, 64>(tile_rows) : tile_kernel_for<F, 32>(tile_rows);
  });
}

// One group of kGroup channels starting at n0, for all rows, in tiles of 8, 4, 2 and 1 rows.
template <typename Element>
void run_group(const WeightView& view, const DirectPlan& plan, std::int64_t n0,
               const std::uint16_t* x, const float* bias, Element* out) {
  float sums[kMaxAccumulators];
  std::int64_t m0 = 0;
  while (m0 < plan.rows) {
    std::int64_t tile_rows = kMaxTileRows;
    while (tile_rows > plan.rows - m0) {
      tile_rows /= 2;
    }
    const int sub_group = sub_group_for(static_cast<int>(tile_rows));
    const TileKernel kernel = select_kernel(view.format, plan.step, tile_rows);
    for (std::int64_t j = 0; j < kGroup && n0 + j < view.out_features; j += sub_group) {
      kernel(view, n0 + j, x + m0 * plan.padded_k, plan.padded_k, sums);
      store_tile(view, sums, sub_group, m0, tile_rows, n0 + j, bias, out);
    }
    m0 += tile_rows;
  }
}

#else  // portable fallback

template <typename Element>
void run_group(const WeightView& view, const DirectPlan& plan, std::int64_t n0,
               const std::uint16_t* x, const float* bias, Element* out) {
  for (std::int64_t n = n0; n < std::min(n0 + kGroup, view.out_features); ++n) {
    for (std::int64_t m = 0; m < plan.rows; ++m) {
      float sum = 0.0f;
      for (std::int64_t k = 0; k < view.in_features; ++k) {
        const float weight = bf16_bits_to_f32(to_bf16_bits(view.unscaled(n, k)));
        sum += bf16_bits_to_f32(x[m * plan.padded_k + k]) * weight;
      }
      const float offset = bias != nullptr ? bias[n] : 0.0f;
      store_value(sum * view.row_scale(n) + offset, out + m * view.out_features + n);
    }
  }
}

#endif  // ETHEREAL_QUANT_AVX512

}  // namespace

DirectPlan plan_direct(const QuantizedWeight& weight, std::int64_t rows) {
  DirectPlan plan;
  plan.rows = rows;
#if defined(ETHEREAL_QUANT_AVX512)
  plan.step = weight.in_features % 64 == 0 ? 64 : 32;
#endif
  plan.padded_k = (weight.in_features + plan.step - 1) / plan.step * plan.step;
  plan.permuted_input = plan.step == 64 && weight.format == QuantFormat::nf4;
  return plan;
}

void prepare_direct_input(const Tensor& x, const DirectPlan& plan, const Tensor& x_bf16) {
  const std::int64_t k = x.size(-1);
  const auto* source = static_cast<const std::uint8_t*>(x.data());
  auto* destination = x_bf16.data_as<std::uint16_t>();
  const std::size_t source_row = dtype_bytes(x.dtype(), static_cast<std::size_t>(k));
  parallel_for(0, plan.rows, 4, [&](std::int64_t begin, std::int64_t end) {
    std::vector<std::uint16_t> natural(plan.permuted_input ? static_cast<std::size_t>(k) : 0);
    for (std::int64_t m = begin; m < end; ++m) {
      std::uint16_t* row = destination + m * plan.padded_k;
      std::uint16_t* converted = plan.permuted_input ? natural.data() : row;
      convert_elements(source + static_cast<std::size_t>(m) * source_row, x.dtype(), converted,
                       DType::bf16, static_cast<std::size_t>(k));
      if (plan.permuted_input) {
        // Within each block of 64: the 32 even elements, then the 32 odd ones.
        for (std::int64_t block = 0; block < k; block += 64) {
          for (std::int64_t j = 0; j < 32; ++j) {
            row[block + j] = converted[block + 2 * j];
            row[block + 32 + j] = converted[block + 2 * j + 1];
          }
        }
      }
      std::fill(row + k, row + plan.padded_k, std::uint16_t{0});
    }
  });
}

void direct_linear(const QuantizedWeight& weight, const DirectPlan& plan, const Tensor& x_bf16,
                   const float* bias, const Tensor& out) {
  const WeightView view(weight);
  const auto* x = x_bf16.data_as<const std::uint16_t>();
  const std::int64_t groups = (weight.out_features + kGroup - 1) / kGroup;
  parallel_for(0, groups, 4, [&](std::int64_t begin, std::int64_t end) {
    // A local copy: vector stores may alias anything, so fields read through a reference would
    // be reloaded after every store.
    const WeightView local_view = view;
    for (std::int64_t group = begin; group < end; ++group) {
      if (out.dtype() == DType::f32) {
        run_group(local_view, plan, group * kGroup, x, bias, out.data_as<float>());
      } else {
        run_group(local_view, plan, group * kGroup, x, bias, out.data_as<std::uint16_t>());
      }
    }
  });
}

}  // namespace ethereal::quant::detail
