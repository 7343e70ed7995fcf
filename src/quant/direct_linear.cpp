#include "quant/direct_linear.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "quant/weight_decoder.h"
#include "runtime/parallel.h"

namespace ethereal::quant::detail {

namespace {

template <typename Element>
void store_value(float value, Element* destination) {
  if constexpr (sizeof(Element) == sizeof(float)) {
    *destination = value;
  } else {
    *destination = to_bf16_bits(value);
  }
}

// Stores out[n] from the sum of decoded values of channel n: the scale (1 for nf4, whose
// decoded values include it) and the bias are applied in f32 before the one rounding.
template <typename Element>
void store_output(const WeightView& w, std::int64_t n, float sum, const float* bias,
                  Element* out_row) {
  const float offset = bias != nullptr ? bias[n] : 0.0f;
  store_value(sum * w.row_scale(n) + offset, out_row + n);
}

#if defined(ETHEREAL_QUANT_AVX512)

// Element of a chunk that position j of the chunk holds in `order`. The decoders below produce
// the weights in these orders, 32 bf16 values (one register) per part:
//   bytes64:    part p = j / 32 holds, in word lane i = j % 32, element 16 (i / 8) + 8 p + i % 8
//               (vpunpcklbw and vpunpckhbw interleave bytes within 128-bit lanes).
//   nibbles128: part p = j / 32 holds, in word lane i = j % 32, element 4 i + p (the nibble p of
//               16-bit word i of the 64 loaded bytes).
std::int64_t source_index(InputOrder order, std::int64_t j) {
  const std::int64_t part = j / 32;
  const std::int64_t lane = j % 32;
  switch (order) {
    case InputOrder::bytes64: return 16 * (lane / 8) + 8 * part + lane % 8;
    case InputOrder::nibbles128: return 4 * lane + part;
    case InputOrder::natural: break;
  }
  return j;
}

// The scale and the bias of each channel of a tile (see store_output), looked up once per tile.
template <int Channels>
struct TileTerms {
  float scale[Channels];
  float bias[Channels];
  std::int64_t count;  // channels of the tile that exist

  TileTerms(const WeightView& w, std::int64_t n0, const float* biases)
      : count(std::min<std::int64_t>(Channels, w.out_features - n0)) {
    for (std::int64_t c = 0; c < Channels; ++c) {
      const std::int64_t n = std::min(n0 + c, w.out_features - 1);
      scale[c] = w.row_scale(n);
      bias[c] = biases != nullptr ? biases[n] : 0.0f;
    }
  }

  // out_row[n0 + c] = sums[c] * scale[c] + bias[c] for the channels that exist.
  template <typename Element>
  void store(const float* sums, Element* out) const {
    for (std::int64_t c = 0; c < count; ++c) {
      store_value(sums[c] * scale[c] + bias[c], out + c);
    }
  }
};

// Channels per tile of the one-row kernel: 8 independent accumulators hide the latency of
// vdpbf16ps.
constexpr std::int64_t kWideTile = 8;
// Most rows of the register kernel (see choose_kernel). Up to kMaxSequentialRows rows it takes
// the channels of a tile one after another (sequential_tile).
constexpr std::int64_t kMaxRegisterRows = 8;
constexpr int kMaxSequentialRows = 2;
// Columns per segment of the register kernel; the nf4 block absmax values of a segment are
// decoded before its weights.
constexpr std::int64_t kSegmentColumns = 4096;
// Channels per tile of the buffered kernel, and rows of its largest micro-tile: 6 x 4
// accumulators, 4 weight vectors and 1 input vector take 29 of the 32 vector registers.
constexpr std::int64_t kTile = 4;
constexpr int kMaxTileRows = 6;
// Rows per pass of the buffered kernel; their accumulators wait on the stack (15 KiB) while
// the next block of columns is decoded.
constexpr std::int64_t kRowGroup = 10 * kMaxTileRows;
// Columns per block of the buffered kernel: its buffer of 4 x (3072 + 32) bf16 (24 KiB) stays
// in the 32 KiB L1 cache. With 2048 columns per block, 16 and 32 rows ran 6 to 7% slower on the
// 2-core Zen 4 VM of docs/benchmarks/quant.md.
constexpr std::int64_t kMaxBlockColumns = 3072;
constexpr std::int64_t kCacheLine = 64;

inline __m512bh as_bf16(__m512i bits) {
  return (__m512bh)bits;
}

// The sums of the lanes of a, b, c and d, in that order.
inline __m128 sum_lanes4(__m512 a, __m512 b, __m512 c, __m512 d) {
  // Per 128-bit lane: [a0 + a2, b0 + b2, a1 + a3, b1 + b3], then [a, b, c, d] partial sums.
  const __m512 ab =
      _mm512_add_ps(_mm512_maskz_unpacklo_ps(kAll16, a, b), _mm512_maskz_unpackhi_ps(kAll16, a, b));
  const __m512 cd =
      _mm512_add_ps(_mm512_maskz_unpacklo_ps(kAll16, c, d), _mm512_maskz_unpackhi_ps(kAll16, c, d));
  const __m512 abcd =
      _mm512_add_ps(_mm512_maskz_shuffle_ps(kAll16, ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                    _mm512_maskz_shuffle_ps(kAll16, ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512d wide = _mm512_castps_pd(abcd);
  const __m256 halves =
      _mm256_add_ps(_mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, wide, 0)),
                    _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, wide, 1)));
  return _mm_add_ps(_mm256_castps256_ps128(halves), _mm256_extractf128_ps(halves, 1));
}

// The high and low bytes of the bf16 values of the 128 magnitude codes, 64 per register: fp8
// codes 0x00 ... 0x7F (exact; 0x7F is NaN) or the int8 magnitudes 0 ... 127.
struct MagnitudeTables {
  __m512i high[2];
  __m512i low[2];
};

MagnitudeTables make_magnitude_tables(QuantFormat format) {
  alignas(64) std::uint8_t high[128];
  alignas(64) std::uint8_t low[128];
  for (int code = 0; code < 128; ++code) {
    const float value = format == QuantFormat::fp8_e4m3
                            ? fp8_e4m3_to_f32(static_cast<std::uint8_t>(code))
                            : static_cast<float>(code);
    const std::uint16_t bits = to_bf16_bits(value);
    high[code] = static_cast<std::uint8_t>(bits >> 8);
    low[code] = static_cast<std::uint8_t>(bits & 0xFF);
  }
  MagnitudeTables tables;
  for (int half = 0; half < 2; ++half) {
    tables.high[half] = _mm512_load_si512(high + 64 * half);
    tables.low[half] = _mm512_load_si512(low + 64 * half);
  }
  return tables;
}

const MagnitudeTables& magnitude_tables(QuantFormat format) {
  static const MagnitudeTables fp8 = make_magnitude_tables(QuantFormat::fp8_e4m3);
  static const MagnitudeTables int8 = make_magnitude_tables(QuantFormat::int8);
  return format == QuantFormat::fp8_e4m3 ? fp8 : int8;
}

// Decodes 64 fp8 or int8 codes into two registers of bf16 in InputOrder::bytes64. With Masked,
// only the codes selected by `valid` are read and the others decode as 0 (a row's last, partial
// chunk). A masked load was slower on Zen 4, so whole chunks take the plain one.
template <QuantFormat F, bool Masked = false>
inline void decode_bytes64(const std::uint8_t* codes, const MagnitudeTables& tables,
                           __m512i parts[2], __mmask64 valid = ~__mmask64{0}) {
  __m512i bytes = Masked ? _mm512_maskz_loadu_epi8(valid, codes) : _mm512_loadu_si512(codes);
  // Keeps the codes in one register. Without this, GCC 12 loaded them up to three times (once
  // per use), and fp8 and int8 at 2 rows ran about 15% slower from memory on the Zen 5 VM.
  asm("" : "+v"(bytes));
  // vpermt2b reads only bits 0..6 of each index, which for fp8 are the magnitude.
  const __m512i magnitude = F == QuantFormat::int8 ? _mm512_abs_epi8(bytes) : bytes;
  // high = table | (bytes & 0x80): the sign bit of the code becomes the sign bit of the bf16.
  __m512i high =
      _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(tables.high[0], magnitude, tables.high[1]),
                                bytes, _mm512_set1_epi8(static_cast<char>(0x80)), 0xF8);
  const __m512i low = _mm512_permutex2var_epi8(tables.low[0], magnitude, tables.low[1]);
  if constexpr (F == QuantFormat::int8) {
    // |-128| does not fit in 7 bits, so -128 looked up entry 0 and became -0.0. The quantiser
    // never writes -128; a stored layer may. bf16(-128) is 0xC300 and its low byte is 0, as is
    // entry 0's.
    const __mmask64 minimum = _mm512_cmpeq_epi8_mask(bytes, _mm512_set1_epi8(-128));
    if (minimum != 0) [[unlikely]] {
      high = _mm512_mask_mov_epi8(high, minimum, _mm512_set1_epi8(static_cast<char>(0xC3)));
    }
  }
  parts[0] = _mm512_unpacklo_epi8(low, high);
  parts[1] = _mm512_unpackhi_epi8(low, high);
}

// The bf16 values of the 16 nf4 codes in a block of absmax `first` (words 0..15) and in one of
// absmax `second` (words 16..31), rounded like dequantize().
inline __m512i nf4_pair_table(float first, float second) {
  const __m512 codebook = _mm512_loadu_ps(kNf4Codebook.data());
  return (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(codebook, _mm512_set1_ps(second)),
                                      _mm512_mul_ps(codebook, _mm512_set1_ps(first)));
}

// Decodes 128 nf4 codes (64 bytes, two blocks) into four registers in InputOrder::nibbles128.
// Word i of the loaded bytes holds elements 4 i ... 4 i + 3 in its four nibbles, low nibble
// first. vpermw reads bits 0..4 of each 16-bit index, and word lanes 16..31 hold the second
// block, so bit 4 of their index is set. One mask keeps nibbles 0 and 2 of every word (`even`)
// or, after a shift by 4, nibbles 1 and 3 (`odd`), and sets the block bit in both bytes. The low
// bytes then index elements 4 i and 4 i + 1, and after a shift by 8 the high bytes index 4 i + 2
// and 4 i + 3. The four index vectors take 3 shifts and 2 logic instructions.
inline void decode_nibbles128(const std::uint8_t* codes, __m512i table, __m512i parts[4]) {
  const __m512i bytes = _mm512_loadu_si512(codes);
  const __m512i code_mask = _mm512_set1_epi16(0x0F0F);
  const __m512i second_block = _mm512_maskz_set1_epi16(0xFFFF0000u, 0x1010);
  // (shifted & code_mask) | second_block
  const auto index = [&](__m512i shifted) {
    return _mm512_ternarylogic_epi32(shifted, code_mask, second_block, 0xEA);
  };
  const __m512i even = index(bytes);
  const __m512i odd = index(_mm512_srli_epi16(bytes, 4));
  parts[0] = _mm512_permutexvar_epi16(even, table);
  parts[1] = _mm512_permutexvar_epi16(odd, table);
  parts[2] = _mm512_permutexvar_epi16(_mm512_srli_epi16(even, 8), table);
  parts[3] = _mm512_permutexvar_epi16(_mm512_srli_epi16(odd, 8), table);
}

// The first `remaining` of 64 bytes, all of them for 64 or more: the codes of a row's last,
// partial chunk.
inline __mmask64 chunk_mask(std::int64_t remaining) {
  return remaining >= 64 ? ~__mmask64{0} : (__mmask64{1} << remaining) - 1;
}

// Elements per chunk of the fast decoder of format F.
template <QuantFormat F>
inline constexpr std::int64_t kFastChunk = F == QuantFormat::nf4 ? 128 : 64;

// Bytes per 2 elements of format F: 1 for nf4, 2 for fp8 and int8.
template <QuantFormat F>
inline constexpr std::int64_t kBytesPerPair = F == QuantFormat::nf4 ? 1 : 2;

// Bytes from channel n0's codes to those of channel n0 + count when channel n0 + 2 count - 1
// exists, else 0. The kernels prefetch the next tile's codes at this distance ahead of the
// codes they read; 0 makes them prefetch lines they already read (the last tiles).
template <QuantFormat F>
std::int64_t next_tile_distance(const WeightView& w, std::int64_t n0, std::int64_t count) {
  if (n0 + 2 * count > w.out_features) {
    return 0;
  }
  return count * w.in_features * kBytesPerPair<F> / 2;
}

// Prefetches, into the L2 cache, the codes of channels [n0, n0 + count): the first tile of a
// thread's range, which no earlier tile prefetched.
template <QuantFormat F>
void prefetch_channels(const WeightView& w, std::int64_t n0, std::int64_t count) {
  const std::int64_t first = std::min(n0, w.out_features) * w.in_features;
  const std::int64_t last = std::min(n0 + count, w.out_features) * w.in_features;
  const std::uint8_t* begin = w.values + first * kBytesPerPair<F> / 2;
  const std::uint8_t* end = w.values + (last * kBytesPerPair<F> + 1) / 2;
  for (const std::uint8_t* line = begin; line < end; line += kCacheLine) {
    _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T1);
  }
}

// WeightView::block_absmax with the fields in local copies and shifts for divisions, for the
// inner loops (a block index is never negative).
struct Nf4Absmax {
  const std::uint8_t* codes;
  const float* group_scales;
  const float* code_map;
  float offset;

  explicit Nf4Absmax(const WeightView& w)
      : codes(w.absmax_codes),
        group_scales(w.group_scales),
        code_map(w.code_map),
        offset(w.offset) {}

  float operator()(std::int64_t block) const {
    static_assert(kNf4AbsmaxGroupSize == 256);
    return std::fma(code_map[codes[block]], group_scales[block >> 8], offset);
  }
};

// ---- Register kernel (1 to 8 rows) ----

// sums[r * Channels + c] = sum over k of x[r][k] * decoded W[n0 + c, k] for r < Rows and
// c < Channels, with Rows x Channels accumulators and the decoded weights in registers. Channels
// past the end repeat the last one; the caller skips them. Each chunk of codes read is followed
// by a prefetch `ahead` bytes further on, in the next tile.
template <QuantFormat F, int Rows, int Channels>
void register_tile(const WeightView& w, const MagnitudeTables& tables, const std::uint16_t* x,
                   std::int64_t x_stride, std::int64_t n0, std::int64_t ahead, float* sums) {
  constexpr std::int64_t kChunk = kFastChunk<F>;
  constexpr int kParts = static_cast<int>(kChunk / 32);
  // Up to 8 input vectors of a chunk are loaded once and kept in registers for all channels.
  // More would crowd the accumulators, so then each channel loads them again (from L1).
  constexpr bool kKeepInputs = Rows * kParts <= 8;
  constexpr bool kNf4 = F == QuantFormat::nf4;
  const std::int64_t k = w.in_features;
  const std::uint8_t* const values = w.values;
  const Nf4Absmax block_absmax(w);
  // Flat index of element 0 of each channel.
  std::int64_t starts[Channels];
  __m512 acc[Rows][Channels];
  for (int c = 0; c < Channels; ++c) {
    starts[c] = std::min(n0 + c, w.out_features - 1) * k;
    for (int r = 0; r < Rows; ++r) {
      acc[r][c] = _mm512_setzero_ps();
    }
  }
  // nf4: the absmax values of the segment's blocks, decoded first, so that the table
  // multiplications below read them as broadcast memory operands.
  alignas(64) float absmax[Channels][kNf4 ? kSegmentColumns / kNf4BlockSize : 1];
  // One chunk of columns [k0, k0 + kChunk) of a segment that starts at s0.
  const auto step = [&]<bool Masked>(std::int64_t k0, std::int64_t s0) {
    const auto input = [&](int r, int p) {
      return as_bf16(_mm512_loadu_si512(x + r * x_stride + k0 + 32 * p));
    };
    __m512bh inputs[Rows][kParts];
    if constexpr (kKeepInputs) {
      for (int r = 0; r < Rows; ++r) {
        for (int p = 0; p < kParts; ++p) {
          inputs[r][p] = input(r, p);
        }
      }
    }
#pragma GCC unroll 8
    for (int c = 0; c < Channels; ++c) {
      // Flat indices are not negative, so shifts divide.
      const std::int64_t index = starts[c] + k0;
      const std::uint8_t* codes = values + (index * kBytesPerPair<F> >> 1);
      __m512i parts[kParts];
      if constexpr (kNf4) {
        const std::int64_t b = (k0 - s0) >> 6;
        decode_nibbles128(codes, nf4_pair_table(absmax[c][b], absmax[c][b + 1]), parts);
      } else {
        decode_bytes64<F, Masked>(codes, tables, parts, chunk_mask(k - k0));
      }
      _mm_prefetch(reinterpret_cast<const char*>(codes + ahead), _MM_HINT_T1);
      for (int r = 0; r < Rows; ++r) {
        for (int p = 0; p < kParts; ++p) {
          if constexpr (kKeepInputs) {
            acc[r][c] = _mm512_dpbf16_ps(acc[r][c], inputs[r][p], as_bf16(parts[p]));
          } else {
            acc[r][c] = _mm512_dpbf16_ps(acc[r][c], input(r, p), as_bf16(parts[p]));
          }
        }
      }
    }
  };
  for (std::int64_t s0 = 0; s0 < k; s0 += kSegmentColumns) {
    const std::int64_t s1 = std::min(k, s0 + kSegmentColumns);
    if constexpr (kNf4) {
      for (int c = 0; c < Channels; ++c) {
        const std::int64_t first = (starts[c] + s0) >> 6;
        for (std::int64_t b = 0; b < (s1 - s0) >> 6; ++b) {
          absmax[c][b] = block_absmax(first + b);
        }
      }
    }
    // Whole chunks, then for fp8 and int8 the row's partial last chunk, if any.
    const std::int64_t whole_end = s0 + (s1 - s0) / kChunk * kChunk;
    for (std::int64_t k0 = s0; k0 < whole_end; k0 += kChunk) {
      step.template operator()<false>(k0, s0);
    }
    if constexpr (!kNf4) {
      if (whole_end < s1) {
        step.template operator()<true>(whole_end, s0);
      }
    }
  }
  // acc in row-major order, summed four accumulators at a time.
  const __m512* flat = &acc[0][0];
  int i = 0;
  for (; i + 4 <= Rows * Channels; i += 4) {
    _mm_storeu_ps(sums + i, sum_lanes4(flat[i], flat[i + 1], flat[i + 2], flat[i + 3]));
  }
  if (i < Rows * Channels) {
    const __m512 zero = _mm512_setzero_ps();
    const auto at = [&](int j) { return j < Rows * Channels ? flat[j] : zero; };
    alignas(16) float last[4];
    _mm_store_ps(last, sum_lanes4(at(i), at(i + 1), at(i + 2), at(i + 3)));
    std::copy(last, last + Rows * Channels - i, sums + i);
  }
}

// ---- Sequential kernel (1 and 2 rows) ----

// Computes the sums of register_tile (up to the order of the f32 additions), taking the
// channels of the tile one after another.
// Each channel's codes are read front to back, so a thread reads one sequential stream instead
// of Channels interleaved ones. Each row has 2 accumulators. nf4 decodes two chunks per step,
// into 2 more accumulators, because its decoding costs more.
template <QuantFormat F, int Rows, int Channels>
void sequential_tile(const WeightView& w, const MagnitudeTables& tables, const std::uint16_t* x,
                     std::int64_t x_stride, std::int64_t n0, std::int64_t ahead, float* sums) {
  constexpr std::int64_t kChunk = kFastChunk<F>;
  constexpr int kParts = static_cast<int>(kChunk / 32);
  constexpr bool kNf4 = F == QuantFormat::nf4;
  constexpr int kChunksPerStep = kNf4 ? 2 : 1;
  const std::int64_t k = w.in_features;
  const Nf4Absmax block_absmax(w);
  // Decodes the chunk at column k0 of the channel whose codes start at `codes`, whose first
  // nf4 block is `block`.
  const auto decode = [&](const std::uint8_t* codes, std::int64_t block, std::int64_t k0,
                          __m512i parts[kParts]) {
    const std::uint8_t* chunk = codes + (k0 * kBytesPerPair<F> >> 1);
    if constexpr (kNf4) {
      const std::int64_t b = block + (k0 >> 6);
      decode_nibbles128(chunk, nf4_pair_table(block_absmax(b), block_absmax(b + 1)), parts);
    } else {
      decode_bytes64<F>(chunk, tables, parts);
    }
    _mm_prefetch(reinterpret_cast<const char*>(chunk + ahead), _MM_HINT_T1);
  };
  // Channels past the end are skipped: the caller stores only the channels that exist.
  const std::int64_t channels = std::min<std::int64_t>(Channels, w.out_features - n0);
  for (int c = 0; c < channels; ++c) {
    const std::int64_t start = (n0 + c) * k;
    const std::uint8_t* codes = w.values + (start * kBytesPerPair<F> >> 1);
    const std::int64_t block = start >> 6;
    __m512 acc[kChunksPerStep][Rows][2];
    for (int s = 0; s < kChunksPerStep; ++s) {
      for (int r = 0; r < Rows; ++r) {
        acc[s][r][0] = _mm512_setzero_ps();
        acc[s][r][1] = _mm512_setzero_ps();
      }
    }
    std::int64_t k0 = 0;
    for (; k0 + kChunksPerStep * kChunk <= k; k0 += kChunksPerStep * kChunk) {
      __m512i parts[kChunksPerStep][kParts];
      for (int s = 0; s < kChunksPerStep; ++s) {
        decode(codes, block, k0 + s * kChunk, parts[s]);
      }
      for (int s = 0; s < kChunksPerStep; ++s) {
        for (int r = 0; r < Rows; ++r) {
          for (int p = 0; p < kParts; ++p) {
            const __m512i input = _mm512_loadu_si512(x + r * x_stride + k0 + s * kChunk + 32 * p);
            acc[s][r][p & 1] =
                _mm512_dpbf16_ps(acc[s][r][p & 1], as_bf16(input), as_bf16(parts[s][p]));
          }
        }
      }
    }
    // The remaining chunks are whole, except for fp8 and int8 a last partial one, read with a
    // mask. An nf4 row here is a multiple of 128 long.
    for (; k0 < k; k0 += kChunk) {
      __m512i parts[kParts];
      if constexpr (kNf4) {
        decode(codes, block, k0, parts);
      } else if (k - k0 >= kChunk) {
        decode(codes, block, k0, parts);
      } else {
        decode_bytes64<F, true>(codes + k0, tables, parts, chunk_mask(k - k0));
      }
      for (int r = 0; r < Rows; ++r) {
        for (int p = 0; p < kParts; ++p) {
          const __m512i input = _mm512_loadu_si512(x + r * x_stride + k0 + 32 * p);
          acc[0][r][p & 1] = _mm512_dpbf16_ps(acc[0][r][p & 1], as_bf16(input), as_bf16(parts[p]));
        }
      }
    }
    for (int r = 0; r < Rows; ++r) {
      __m512 total = _mm512_add_ps(acc[0][r][0], acc[0][r][1]);
      for (int s = 1; s < kChunksPerStep; ++s) {
        total = _mm512_add_ps(total, _mm512_add_ps(acc[s][r][0], acc[s][r][1]));
      }
      sums[r * Channels + c] = _mm512_reduce_add_ps(total);
    }
  }
}

template <QuantFormat F, int Rows, int Channels, typename Element>
void run_register(const WeightView& w, const DirectPlan& plan, const std::uint16_t* x,
                  const float* bias, Element* out, std::int64_t tile_begin, std::int64_t tile_end) {
  const MagnitudeTables tables = magnitude_tables(w.format);
  const std::int64_t n_total = w.out_features;
  prefetch_channels<F>(w, tile_begin * Channels, Channels);
  for (std::int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const std::int64_t n0 = tile * Channels;
    float sums[Rows * Channels];
    const std::int64_t ahead = next_tile_distance<F>(w, n0, Channels);
    if constexpr (Rows <= kMaxSequentialRows) {
      sequential_tile<F, Rows, Channels>(w, tables, x, plan.padded_k, n0, ahead, sums);
    } else {
      register_tile<F, Rows, Channels>(w, tables, x, plan.padded_k, n0, ahead, sums);
    }
    const TileTerms<Channels> terms(w, n0, bias);
    for (std::int64_t r = 0; r < Rows; ++r) {
      terms.store(sums + r * Channels, out + r * n_total + n0);
    }
  }
}

// ---- Buffered kernel (more rows) ----

// Decodes columns [k0, k0 + columns) of channels n0 ... n0 + kTile - 1 (past the end, the last
// channel again) into `buffer`, whose rows are `stride` elements apart, in plan.order.
template <QuantFormat F>
void decode_tile(const WeightView& w, const MagnitudeTables& tables, const DirectPlan& plan,
                 std::int64_t n0, std::int64_t k0, std::int64_t columns, std::uint16_t* buffer,
                 std::int64_t stride) {
  constexpr std::int64_t kChunk = kFastChunk<F>;
  // Local copies stay in registers: the stores into the buffer could alias the originals.
  const MagnitudeTables local_tables = tables;
  const std::uint8_t* const values = w.values;
  const std::int64_t k = w.in_features;
  const Nf4Absmax block_absmax(w);
  alignas(64) float absmax[kMaxBlockColumns / kNf4BlockSize];
  for (std::int64_t c = 0; c < kTile; ++c) {
    const std::int64_t n = std::min(n0 + c, w.out_features - 1);
    std::uint16_t* row = buffer + c * stride;
    if constexpr (F == QuantFormat::nf4) {
      if (plan.order == InputOrder::natural) {
        for (std::int64_t j = 0; j < columns; j += 32) {
          _mm512_store_si512(row + j, decode32_any_as<F>(w, n, k0 + j, 1.0f));
        }
        continue;
      }
      const std::int64_t first = (n * k + k0) >> 6;
      for (std::int64_t b = 0; b < columns >> 6; ++b) {
        absmax[b] = block_absmax(first + b);
      }
    }
    for (std::int64_t j = 0; j < columns; j += kChunk) {
      __m512i parts[kChunk / 32];
      if constexpr (F == QuantFormat::nf4) {
        const std::int64_t b = j / kNf4BlockSize;
        decode_nibbles128(values + (n * k + k0 + j) / 2, nf4_pair_table(absmax[b], absmax[b + 1]),
                          parts);
      } else {
        const std::uint8_t* codes = values + n * k + k0 + j;
        if (k - k0 - j >= kChunk) {
          decode_bytes64<F>(codes, local_tables, parts);
        } else {
          decode_bytes64<F, true>(codes, local_tables, parts, chunk_mask(k - k0 - j));
        }
      }
      for (std::int64_t p = 0; p < kChunk / 32; ++p) {
        _mm512_store_si512(row + j + 32 * p, parts[p]);
      }
    }
  }
}

// The arguments of one micro-tile: Rows rows of x (x_stride apart) times the kTile buffer rows
// (w_stride apart) over `columns` columns.
struct MicroTileArgs {
  const std::uint16_t* x;
  std::int64_t x_stride;
  const std::uint16_t* weights;
  std::int64_t w_stride;
  std::int64_t columns;
  bool first;   // start from zero instead of acc
  __m512* acc;  // [Rows][kTile], read unless `first`, written
  // Cache lines to prefetch, `prefetch_lines` per 32 columns from here on, or null.
  const std::uint8_t* prefetch;
  int prefetch_lines;
};

// acc[r][c] (+)= sum over k < columns of x[r][k] * weights[c][k] for r < Rows and c < kTile,
// with the accumulators in registers.
template <int Rows>
void micro_tile(const MicroTileArgs& args) {
  __m512 sums[Rows][kTile];
  for (int r = 0; r < Rows; ++r) {
    for (int c = 0; c < kTile; ++c) {
      sums[r][c] = args.first ? _mm512_setzero_ps() : args.acc[r * kTile + c];
    }
  }
  const std::uint16_t* x = args.x;
  const std::uint16_t* weights = args.weights;
  const std::uint8_t* prefetch = args.prefetch;
  for (std::int64_t k = 0; k < args.columns; k += 32) {
    if (prefetch != nullptr) {
      for (int line = 0; line < args.prefetch_lines; ++line) {
        _mm_prefetch(reinterpret_cast<const char*>(prefetch + kCacheLine * line), _MM_HINT_T1);
      }
      prefetch += kCacheLine * args.prefetch_lines;
    }
    __m512bh w[kTile];
    for (int c = 0; c < kTile; ++c) {
      w[c] = as_bf16(_mm512_load_si512(weights + c * args.w_stride + k));
    }
    for (int r = 0; r < Rows; ++r) {
      const __m512bh input = as_bf16(_mm512_loadu_si512(x + r * args.x_stride + k));
      for (int c = 0; c < kTile; ++c) {
        sums[r][c] = _mm512_dpbf16_ps(sums[r][c], input, w[c]);
      }
    }
  }
  for (int r = 0; r < Rows; ++r) {
    for (int c = 0; c < kTile; ++c) {
      args.acc[r * kTile + c] = sums[r][c];
    }
  }
}

using MicroTile = void (*)(const MicroTileArgs&);

MicroTile micro_tile_for(std::int64_t rows) {
  static constexpr MicroTile kTable[kMaxTileRows] = {micro_tile<1>, micro_tile<2>, micro_tile<3>,
                                                     micro_tile<4>, micro_tile<5>, micro_tile<6>};
  return kTable[rows - 1];
}

// Stride in elements of rows of `columns` bf16 values, padded to an odd number of cache lines
// so that the rows a micro-tile reads together fall into different sets of the L1 cache.
std::int64_t odd_line_stride(std::int64_t columns) {
  return (columns / 32) % 2 == 0 ? columns + 32 : columns;
}

// Lane 4 r + c of the result is the sum of the lanes of acc[4 r + c], for 16 accumulators.
inline __m512 sum_lanes16(const __m512* acc) {
  // Pairs, then quadruples: each 128-bit lane of quad[q] holds partial sums of acc[4 q ... 4 q +
  // 3], in that order.
  __m512 quad[4];
  for (int q = 0; q < 4; ++q) {
    const __m512* a = acc + 4 * q;
    const __m512 ab = _mm512_add_ps(_mm512_maskz_unpacklo_ps(kAll16, a[0], a[1]),
                                    _mm512_maskz_unpackhi_ps(kAll16, a[0], a[1]));
    const __m512 cd = _mm512_add_ps(_mm512_maskz_unpacklo_ps(kAll16, a[2], a[3]),
                                    _mm512_maskz_unpackhi_ps(kAll16, a[2], a[3]));
    quad[q] = _mm512_add_ps(_mm512_maskz_shuffle_ps(kAll16, ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                            _mm512_maskz_shuffle_ps(kAll16, ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  // Sum the four 128-bit lanes of each quad[q] into 128-bit lane q of the result.
  const __m512 q01 =
      _mm512_add_ps(_mm512_maskz_shuffle_f32x4(kAll16, quad[0], quad[1], _MM_SHUFFLE(2, 0, 2, 0)),
                    _mm512_maskz_shuffle_f32x4(kAll16, quad[0], quad[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 q23 =
      _mm512_add_ps(_mm512_maskz_shuffle_f32x4(kAll16, quad[2], quad[3], _MM_SHUFFLE(2, 0, 2, 0)),
                    _mm512_maskz_shuffle_f32x4(kAll16, quad[2], quad[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_maskz_shuffle_f32x4(kAll16, q01, q23, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_maskz_shuffle_f32x4(kAll16, q01, q23, _MM_SHUFFLE(3, 1, 3, 1)));
}

// to_bf16_bits of each lane, in the low 16 bits of the lane.
inline __m512i to_bf16_lanes(__m512 values) {
  const __m512i bits = _mm512_castps_si512(values);
  const __m512i high = _mm512_maskz_srli_epi32(kAll16, bits, 16);
  const __m512i rounded = _mm512_maskz_srli_epi32(
      kAll16,
      _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF),
                                              _mm512_and_si512(high, _mm512_set1_epi32(1)))),
      16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(
      _mm512_and_si512(bits, _mm512_set1_epi32(0x7FFFFFFF)), _mm512_set1_epi32(0x7F800000));
  return _mm512_mask_or_epi32(rounded, nan, high, _mm512_set1_epi32(0x40));
}

// Stores 4 rows x kTile channels of outputs (all channels exist) from acc[4 r + c], rows
// `stride` elements apart, with the same arithmetic as TileTerms::store.
template <typename Element>
void store_rows4(const __m512* acc, const TileTerms<kTile>& terms, Element* out,
                 std::int64_t stride) {
  const __m128 scale = _mm_loadu_ps(terms.scale);
  const __m128 bias = _mm_loadu_ps(terms.bias);
  const __m512 values =
      _mm512_add_ps(_mm512_mul_ps(sum_lanes16(acc), _mm512_maskz_broadcast_f32x4(kAll16, scale)),
                    _mm512_maskz_broadcast_f32x4(kAll16, bias));
  if constexpr (sizeof(Element) == sizeof(float)) {
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, values);
    for (int r = 0; r < 4; ++r) {
      _mm_storeu_ps(out + r * stride, _mm_load_ps(lanes + 4 * r));
    }
  } else {
    alignas(32) std::uint16_t words[16];
    _mm256_store_si256(reinterpret_cast<__m256i*>(words),
                       _mm512_maskz_cvtepi32_epi16(kAll16, to_bf16_lanes(values)));
    for (int r = 0; r < 4; ++r) {
      std::memcpy(out + r * stride, words + 4 * r, 4 * sizeof(std::uint16_t));
    }
  }
}

template <QuantFormat F, typename Element>
void run_buffered(const WeightView& w, const DirectPlan& plan, const std::uint16_t* x,
                  const float* bias, Element* out, std::int64_t tile_begin, std::int64_t tile_end) {
  const MagnitudeTables tables = magnitude_tables(w.format);
  const std::int64_t n_total = w.out_features;
  // Equal blocks of columns, each a multiple of the chunk and at most kMaxBlockColumns.
  const std::int64_t blocks = (plan.columns + kMaxBlockColumns - 1) / kMaxBlockColumns;
  const std::int64_t block_columns =
      ((plan.columns + blocks - 1) / blocks + plan.chunk - 1) / plan.chunk * plan.chunk;
  const std::int64_t buffer_stride = odd_line_stride(block_columns);
  alignas(64) std::uint16_t buffer[kTile * (kMaxBlockColumns + 32)];
  alignas(64) __m512 acc[kRowGroup * kTile];

  prefetch_channels<F>(w, tile_begin * kTile, kTile);
  for (std::int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const std::int64_t n0 = tile * kTile;
    // The next tile's codes (4 channels x 32 columns = 1 or 2 cache lines per step of 32
    // columns) are prefetched during the first micro-tile of the first group of rows.
    const TileTerms<kTile> terms(w, n0, bias);
    const std::int64_t distance = next_tile_distance<F>(w, n0, kTile);
    const std::uint8_t* next_tile =
        distance > 0 ? w.values + n0 * w.in_features * kBytesPerPair<F> / 2 + distance : nullptr;
    for (std::int64_t m0 = 0; m0 < plan.rows; m0 += kRowGroup) {
      const std::int64_t group_rows = std::min(kRowGroup, plan.rows - m0);
      // Micro-tiles of equal size, as far as possible: 16 rows run as 6 + 5 + 5.
      const std::int64_t micro_tiles = (group_rows + kMaxTileRows - 1) / kMaxTileRows;
      for (std::int64_t k0 = 0; k0 < plan.columns; k0 += block_columns) {
        const std::int64_t columns = std::min(block_columns, plan.columns - k0);
        decode_tile<F>(w, tables, plan, n0, k0, columns, buffer, buffer_stride);
        std::int64_t r0 = 0;
        for (std::int64_t t = 0; t < micro_tiles; ++t) {
          const std::int64_t rows =
              group_rows / micro_tiles + (t < group_rows % micro_tiles ? 1 : 0);
          const MicroTileArgs args{
              .x = x + (m0 + r0) * plan.padded_k + k0,
              .x_stride = plan.padded_k,
              .weights = buffer,
              .w_stride = buffer_stride,
              .columns = columns,
              .first = k0 == 0,
              .acc = acc + r0 * kTile,
              .prefetch = next_tile != nullptr && m0 == 0 && t == 0
                              ? next_tile + k0 / 32 * kCacheLine * kBytesPerPair<F>
                              : nullptr,
              .prefetch_lines = static_cast<int>(kBytesPerPair<F>)};
          micro_tile_for(rows)(args);
          r0 += rows;
        }
      }
      std::int64_t m = 0;
      if (terms.count == kTile) {
        for (; m + 4 <= group_rows; m += 4) {
          store_rows4(acc + m * kTile, terms, out + (m0 + m) * n_total + n0, n_total);
        }
      }
      for (; m < group_rows; ++m) {
        const __m512* row = acc + m * kTile;
        float sums[kTile];
        _mm_storeu_ps(sums, sum_lanes4(row[0], row[1], row[2], row[3]));
        terms.store(sums, out + (m0 + m) * n_total + n0);
      }
    }
  }
}

// Permutes the plan.columns bf16 values of a row from natural order into plan.order, a chunk at
// a time with vpermt2w.
void permute_row(const DirectPlan& plan, const std::uint16_t* natural, std::uint16_t* row) {
  // Part p of a chunk gathers source_index(order, 32 p + i) for i < 32, which for nibbles128
  // comes from the first 64 elements in lanes 0..15 and from the last 64 in lanes 16..31.
  alignas(64) std::uint16_t indices[4][32];
  for (std::int64_t j = 0; j < plan.chunk; ++j) {
    indices[j / 32][j % 32] = static_cast<std::uint16_t>(source_index(plan.order, j) % 64);
  }
  const int parts = static_cast<int>(plan.chunk / 32);
  __m512i index[4];
  for (int p = 0; p < parts; ++p) {
    index[p] = _mm512_load_si512(indices[p]);
  }
  for (std::int64_t c = 0; c < plan.columns; c += plan.chunk) {
    const std::uint16_t* in = natural + c;
    const __m512i first = _mm512_loadu_si512(in);
    const __m512i second = _mm512_loadu_si512(in + 32);
    if (plan.order == InputOrder::bytes64) {
      _mm512_storeu_si512(row + c, _mm512_permutex2var_epi16(first, index[0], second));
      _mm512_storeu_si512(row + c + 32, _mm512_permutex2var_epi16(first, index[1], second));
      continue;
    }
    const __m512i third = _mm512_loadu_si512(in + 64);
    const __m512i fourth = _mm512_loadu_si512(in + 96);
    for (int p = 0; p < 4; ++p) {
      const __m512i low = _mm512_permutex2var_epi16(first, index[p], second);
      const __m512i high = _mm512_permutex2var_epi16(third, index[p], fourth);
      _mm512_storeu_si512(row + c + 32 * p, _mm512_mask_blend_epi16(0xFFFF0000u, low, high));
    }
  }
}

// The kernel for a number of rows: the register kernel with `channels` channels per tile, or
// the buffered kernel when `register_rows` is 0.
struct Kernel {
  int register_rows = 0;
  std::int64_t channels = kTile;
};

// Picks the register kernel for up to kMaxRegisterRows rows: 8 channels per tile for 1 row, 4
// for 2 rows and for 3 or 4 rows of fp8 and int8, else 2, whose accumulators leave registers
// for the decoder. On the 2-core Zen 4 VM of docs/benchmarks/quant.md, with one thread and the
// weights in the L3 cache, the register kernel ran up to 20% faster than the buffered kernel
// at 3 to 8 rows. It ran as fast at 9 rows, and 7 to 45% slower at 12 and 16 rows.
Kernel choose_kernel(const DirectPlan& plan) {
  const std::int64_t rows = plan.rows;
  if (plan.order == InputOrder::natural || rows > kMaxRegisterRows) {
    return {};
  }
  const bool nf4 = plan.order == InputOrder::nibbles128;
  if (rows == 1) {
    return {1, kWideTile};
  }
  if (rows == 2 || (!nf4 && rows <= 4)) {
    return {static_cast<int>(rows), kTile};
  }
  return {static_cast<int>(rows), 2};
}

std::int64_t tile_channels(Kernel kernel) {
  return kernel.channels;
}

template <typename Element>
void run_tiles(const WeightView& w, const DirectPlan& plan, const std::uint16_t* x,
               const float* bias, Element* out, Kernel kernel, std::int64_t tile_begin,
               std::int64_t tile_end) {
  dispatch_format(w.format, [&](auto constant) {
    constexpr QuantFormat F = decltype(constant)::value;
    const auto run = [&]<int Rows, int Channels>() {
      run_register<F, Rows, Channels>(w, plan, x, bias, out, tile_begin, tile_end);
    };
    switch (kernel.register_rows * 16 + static_cast<int>(kernel.channels)) {
      case 1 * 16 + kWideTile: run.template operator()<1, kWideTile>(); return;
      case 2 * 16 + kTile: run.template operator()<2, kTile>(); return;
      case 3 * 16 + kTile: run.template operator()<3, kTile>(); return;
      case 4 * 16 + kTile: run.template operator()<4, kTile>(); return;
      case 3 * 16 + 2: run.template operator()<3, 2>(); return;
      case 4 * 16 + 2: run.template operator()<4, 2>(); return;
      case 5 * 16 + 2: run.template operator()<5, 2>(); return;
      case 6 * 16 + 2: run.template operator()<6, 2>(); return;
      case 7 * 16 + 2: run.template operator()<7, 2>(); return;
      case 8 * 16 + 2: run.template operator()<8, 2>(); return;
      default: break;
    }
    run_buffered<F>(w, plan, x, bias, out, tile_begin, tile_end);
  });
}

#else  // portable fallback

enum class Kernel : std::uint8_t { scalar };

Kernel choose_kernel(const DirectPlan& /*plan*/) {
  return Kernel::scalar;
}

std::int64_t tile_channels(Kernel /*kernel*/) {
  return 1;
}

template <typename Element>
void run_tiles(const WeightView& w, const DirectPlan& plan, const std::uint16_t* x,
               const float* bias, Element* out, Kernel /*kernel*/, std::int64_t tile_begin,
               std::int64_t tile_end) {
  for (std::int64_t n = tile_begin; n < tile_end; ++n) {
    for (std::int64_t m = 0; m < plan.rows; ++m) {
      float sum = 0.0f;
      for (std::int64_t k = 0; k < w.in_features; ++k) {
        const float weight = bf16_bits_to_f32(to_bf16_bits(w.unscaled(n, k)));
        sum += bf16_bits_to_f32(x[m * plan.padded_k + k]) * weight;
      }
      store_output(w, n, sum, bias, out + m * w.out_features);
    }
  }
}

#endif  // ETHEREAL_QUANT_AVX512

}  // namespace

DirectPlan plan_direct(const QuantizedWeight& weight, std::int64_t rows) {
  DirectPlan plan;
  plan.rows = rows;
#if defined(ETHEREAL_QUANT_AVX512)
  if (weight.format == QuantFormat::nf4 && weight.in_features % 128 == 0) {
    plan.order = InputOrder::nibbles128;
    plan.chunk = 128;
  } else if (weight.format != QuantFormat::nf4) {
    plan.order = InputOrder::bytes64;
    plan.chunk = 64;
  }
#endif
  plan.columns = (weight.in_features + plan.chunk - 1) / plan.chunk * plan.chunk;
#if defined(ETHEREAL_QUANT_AVX512)
  plan.padded_k = odd_line_stride(plan.columns);
#else
  plan.padded_k = plan.columns;
#endif
  return plan;
}

void prepare_direct_input(const Tensor& x, const DirectPlan& plan, const Tensor& x_bf16) {
  const std::int64_t k = x.size(-1);
  const auto* source = static_cast<const std::uint8_t*>(x.data());
  auto* destination = x_bf16.data_as<std::uint16_t>();
  const std::size_t source_row = dtype_bytes(x.dtype(), static_cast<std::size_t>(k));
  const bool permuted = plan.order != InputOrder::natural;
  parallel_for(0, plan.rows, 4, [&](std::int64_t begin, std::int64_t end) {
    // The natural order of a row, zero-padded to whole chunks, before it is permuted.
    std::vector<std::uint16_t> natural(permuted ? static_cast<std::size_t>(plan.columns) : 0);
    for (std::int64_t m = begin; m < end; ++m) {
      std::uint16_t* row = destination + m * plan.padded_k;
      std::uint16_t* converted = permuted ? natural.data() : row;
      convert_elements(source + static_cast<std::size_t>(m) * source_row, x.dtype(), converted,
                       DType::bf16, static_cast<std::size_t>(k));
      std::int64_t filled = k;
#if defined(ETHEREAL_QUANT_AVX512)
      if (permuted) {
        permute_row(plan, natural.data(), row);
        filled = plan.columns;
      }
#endif
      std::fill(row + filled, row + plan.padded_k, std::uint16_t{0});
    }
  });
}

void direct_linear(const QuantizedWeight& weight, const DirectPlan& plan, const Tensor& x_bf16,
                   const float* bias, const Tensor& out) {
  const WeightView view(weight);
  const auto* x = x_bf16.data_as<const std::uint16_t>();
  const Kernel kernel = choose_kernel(plan);
  const std::int64_t channels = tile_channels(kernel);
  const std::int64_t tiles = (weight.out_features + channels - 1) / channels;
  parallel_for(0, tiles, 4, [&](std::int64_t begin, std::int64_t end) {
    // A local copy: vector stores may alias anything, so fields read through a reference would
    // be reloaded after every store.
    const WeightView local_view = view;
    if (out.dtype() == DType::f32) {
      run_tiles(local_view, plan, x, bias, out.data_as<float>(), kernel, begin, end);
    } else {
      run_tiles(local_view, plan, x, bias, out.data_as<std::uint16_t>(), kernel, begin, end);
    }
  });
}

}  // namespace ethereal::quant::detail
