#include "quant/packed_dequant.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "quant/weight_decoder.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace ethereal::quant {

namespace {

void check_arguments(const QuantizedWeight& weight, std::int64_t first_row,
                     const cpu::PackedLayout& layout) {
  if (layout.k != weight.in_features || first_row < 0 ||
      first_row + layout.n > weight.out_features) {
    throw Error(fmt::format(
        "dequantize_to_packed: a packed layout [{}, {}] at row {} does not fit the weight [{}, "
        "{}]; expected k = in_features and rows inside out_features",
        layout.k, layout.n, first_row, weight.out_features, weight.in_features));
  }
  if (layout.dtype != DType::bf16 && layout.dtype != DType::f32) {
    throw Error(
        fmt::format("dequantize_to_packed: packed dtype {} is not supported; expected f32 "
                    "or bf16",
                    dtype_name(layout.dtype)));
  }
}

bool is_ba16a64b2a(const cpu::PackedLayout& layout) {
  const auto& blocks = layout.inner_blocks;
  return layout.dtype == DType::bf16 && blocks.size() == 3 && blocks[0].axis == 0 &&
         blocks[0].size == 16 && blocks[1].axis == 1 && blocks[1].size == 64 &&
         blocks[2].axis == 0 && blocks[2].size == 2;
}

#if defined(ETHEREAL_QUANT_AVX512)

// Transposes a 16 x 16 matrix of 32-bit words held in 16 registers, in place.
[[gnu::always_inline]] inline void transpose16x16(__m512i rows[16]) {
  __m512i pairs[16];
  for (int i = 0; i < 8; ++i) {
    pairs[2 * i] = _mm512_maskz_unpacklo_epi32(detail::kAll16, rows[2 * i], rows[2 * i + 1]);
    pairs[2 * i + 1] = _mm512_maskz_unpackhi_epi32(detail::kAll16, rows[2 * i], rows[2 * i + 1]);
  }
  // quads[4 * q + c] holds, in 128-bit lane L, word 4L + c of rows 4q ... 4q + 3.
  __m512i quads[16];
  for (int q = 0; q < 4; ++q) {
    const __m512i* t = pairs + 4 * q;
    quads[4 * q + 0] = _mm512_maskz_unpacklo_epi64(0xFF, t[0], t[2]);
    quads[4 * q + 1] = _mm512_maskz_unpackhi_epi64(0xFF, t[0], t[2]);
    quads[4 * q + 2] = _mm512_maskz_unpacklo_epi64(0xFF, t[1], t[3]);
    quads[4 * q + 3] = _mm512_maskz_unpackhi_epi64(0xFF, t[1], t[3]);
  }
  // Output row 4L + c gathers lane L of quads[c], quads[4 + c], quads[8 + c], quads[12 + c].
  for (int c = 0; c < 4; ++c) {
    const __m512i even01 = _mm512_maskz_shuffle_i32x4(detail::kAll16, quads[c], quads[4 + c], 0x88);
    const __m512i odd01 = _mm512_maskz_shuffle_i32x4(detail::kAll16, quads[c], quads[4 + c], 0xDD);
    const __m512i even23 =
        _mm512_maskz_shuffle_i32x4(detail::kAll16, quads[8 + c], quads[12 + c], 0x88);
    const __m512i odd23 =
        _mm512_maskz_shuffle_i32x4(detail::kAll16, quads[8 + c], quads[12 + c], 0xDD);
    rows[0 + c] = _mm512_maskz_shuffle_i32x4(detail::kAll16, even01, even23, 0x88);
    rows[8 + c] = _mm512_maskz_shuffle_i32x4(detail::kAll16, even01, even23, 0xDD);
    rows[4 + c] = _mm512_maskz_shuffle_i32x4(detail::kAll16, odd01, odd23, 0x88);
    rows[12 + c] = _mm512_maskz_shuffle_i32x4(detail::kAll16, odd01, odd23, 0xDD);
  }
}

// Elements ahead of the current tile at which each row's weights are prefetched: the tile
// loop reads 64 rows as 64 interleaved streams, more than the hardware prefetchers follow.
constexpr std::int64_t kPrefetchDistance = 256;

// Fills one 64 (N) x 32 (K) tile of a BA16a64b2a buffer. `tile` points at its first element.
template <QuantFormat F>
void write_tile(const detail::WeightView& view, std::int64_t first_row, std::int64_t rows,
                std::int64_t n_block, std::int64_t k_block, std::uint16_t* tile) {
  const std::int64_t k0 = k_block * 32;
  const bool prefetch = k0 + kPrefetchDistance < view.in_features;
  // Whole chunks of every row take decode32_as: the tile is inside the rows and, for nf4,
  // in_features is a multiple of 32 so every row's chunk starts on a byte inside one block.
  const bool whole =
      k0 + 32 <= view.in_features && (F != QuantFormat::nf4 || view.in_features % 32 == 0);
  for (int group = 0; group < 4; ++group) {
    __m512i words[16];
    for (int r = 0; r < 16; ++r) {
      const std::int64_t n_local = n_block * 64 + group * 16 + r;
      if (n_local >= rows) {
        words[r] = _mm512_setzero_si512();
        continue;
      }
      const std::int64_t n = first_row + n_local;
      if (prefetch) {
        _mm_prefetch(reinterpret_cast<const char*>(
                         detail::element_address<F>(view, n, k0 + kPrefetchDistance)),
                     _MM_HINT_T0);
      }
      const float scale = F == QuantFormat::nf4 ? 1.0f : view.row_scale(n);
      words[r] = whole ? detail::decode32_as<F>(view, n, k0, scale)
                       : detail::decode32_any_as<F>(view, n, k0, scale);
    }
    // words[r] word p = features (2p, 2p + 1) of channel r; the layout stores, for each pair p,
    // the 64 channels' words next to each other.
    transpose16x16(words);
    for (int p = 0; p < 16; ++p) {
      _mm512_storeu_si512(tile + p * 128 + group * 32, words[p]);
    }
  }
}

void dequantize_fast(const QuantizedWeight& weight, std::int64_t first_row,
                     const cpu::PackedLayout& layout, void* packed) {
  const std::int64_t n_blocks = layout.padded_n / 64;
  const std::int64_t k_blocks = layout.padded_k / 32;
  auto* base = static_cast<std::uint16_t*>(packed);
  detail::dispatch_format(weight.format, [&](auto format) {
    parallel_for(0, n_blocks * k_blocks, 8, [&](std::int64_t begin, std::int64_t end) {
      // A local copy: the vector stores below may alias anything, so fields read through a
      // reference would be reloaded after every store.
      const detail::WeightView view(weight);
      for (std::int64_t tile = begin; tile < end; ++tile) {
        const std::int64_t n_block = tile / k_blocks;
        const std::int64_t k_block = tile % k_blocks;
        std::uint16_t* destination =
            base + n_block * layout.outer_stride_n + k_block * layout.outer_stride_k;
        write_tile<decltype(format)::value>(view, first_row, layout.n, n_block, k_block,
                                            destination);
      }
    });
  });
}

#endif  // ETHEREAL_QUANT_AVX512

}  // namespace

bool has_fast_packed_path(const cpu::PackedLayout& layout) {
#if defined(ETHEREAL_QUANT_AVX512)
  return is_ba16a64b2a(layout);
#else
  (void)layout;
  return false;
#endif
}

void dequantize_to_packed(const QuantizedWeight& weight, std::int64_t first_row,
                          const cpu::PackedLayout& layout, void* packed) {
  check_arguments(weight, first_row, layout);
#if defined(ETHEREAL_QUANT_AVX512)
  if (is_ba16a64b2a(layout)) {
    dequantize_fast(weight, first_row, layout, packed);
    return;
  }
#endif
  dequantize_to_packed_generic(weight, first_row, layout, packed);
}

void dequantize_to_packed_generic(const QuantizedWeight& weight, std::int64_t first_row,
                                  const cpu::PackedLayout& layout, void* packed) {
  check_arguments(weight, first_row, layout);
  std::memset(packed, 0, layout.bytes);
  const detail::WeightView view(weight);
  std::vector<std::int64_t> k_offsets(static_cast<std::size_t>(layout.k));
  for (std::int64_t k = 0; k < layout.k; ++k) {
    k_offsets[static_cast<std::size_t>(k)] = layout.k_offset(k);
  }
  const std::int64_t grain = std::max<std::int64_t>(1, 8192 / layout.k);
  parallel_for(0, layout.n, grain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t j = begin; j < end; ++j) {
      const std::int64_t n = first_row + j;
      const float scale = view.row_scale(n);
      const std::int64_t row_base = layout.n_offset(j);
      for (std::int64_t k = 0; k < layout.k; ++k) {
        const float value = view.unscaled(n, k) * scale;
        const std::int64_t offset = row_base + k_offsets[static_cast<std::size_t>(k)];
        if (layout.dtype == DType::bf16) {
          static_cast<std::uint16_t*>(packed)[offset] = detail::to_bf16_bits(value);
        } else {
          static_cast<float*>(packed)[offset] = value;
        }
      }
    }
  });
}

}  // namespace ethereal::quant
