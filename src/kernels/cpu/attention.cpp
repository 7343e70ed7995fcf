#include "kernels/cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include <fmt/format.h>

#include "kernels/cpu/attention_gemm.h"
#include "kernels/cpu/kernel_support.h"
#include "runtime/parallel.h"

namespace ethereal::cpu {

namespace {

using attention_detail::GemmArgs;
using attention_detail::kGroup;
using simd::bf16_t;
using simd::chunk_lanes;
using simd::kLanes;
using simd::Vec16;

constexpr const char* kKernel = "attention";
constexpr std::int64_t kDefaultQueryTile = 96;
// Smallest tile the kernel picks by itself when it shrinks tiles to keep all threads busy.
constexpr std::int64_t kMinAutomaticQueryTile = 16;
// Keys per score block. With the default tile, the [96, 512] f32 scores, the bf16
// probabilities and the matching K and V panels (128 KiB each at D = 128) fit in a 1 MiB L2
// cache. 512 measured about 3% faster than 256 on one Zen 4 core.
constexpr std::int64_t kKeyBlock = 512;
constexpr std::size_t kAlignment = 64;
constexpr float kLog2e = 1.4426950408889634f;

std::int64_t round_up(std::int64_t value, std::int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

std::size_t align_bytes(std::size_t bytes) {
  return (bytes + kAlignment - 1) / kAlignment * kAlignment;
}

// Validated sizes of one call.
struct Problem {
  std::int64_t batch = 1;
  std::int64_t queries = 0;  // Sq
  std::int64_t keys = 0;     // Sk
  std::int64_t heads = 0;
  std::int64_t kv_heads = 0;
  std::int64_t dim = 0;
};

// A run of query rows processed by one work item, with the key range its segment allows.
struct QueryTile {
  std::int64_t start = 0;
  std::int64_t rows = 0;
  std::int64_t key_begin = 0;
  std::int64_t key_end = 0;
};

// Buffer sizes and tiling, computed the same way for a real run, a dry run and
// attention_workspace_bytes().
struct Plan {
  bool bf16 = false;  // products in bf16 (else f32)
  std::int64_t element_bytes = 4;
  std::int64_t dim_padded = 0;   // D rounded up to 16
  std::int64_t keys_padded = 0;  // Sk rounded up to 16
  std::int64_t query_tile = 0;
  int workers = 1;
  std::vector<QueryTile> tiles;
  // Scratch layout of one worker, byte offsets.
  std::size_t q_offset = 0, scores_offset = 0, probs_offset = 0, out_offset = 0;
  std::size_t max_offset = 0, sum_offset = 0, worker_bytes = 0;
  std::size_t packed_bytes = 0;  // packed K and V of one key/value head
  std::size_t bias_bytes = 0;
};

Problem describe_problem(const Shape& q, const Shape& k, const Shape& v) {
  const auto rank = static_cast<std::int64_t>(q.size());
  if ((rank != 3 && rank != 4) || k.size() != q.size() || v.size() != q.size()) {
    throw Error(fmt::format("{}: q {}, k {} and v {} must all be [S, H, D] or all [B, S, H, D]",
                            kKernel, shape_str(q), shape_str(k), shape_str(v)));
  }
  if (k != v) {
    throw Error(fmt::format("{}: k {} and v {} must have the same shape", kKernel, shape_str(k),
                            shape_str(v)));
  }

  Problem p;
  const std::size_t base = rank == 4 ? 1 : 0;
  p.batch = rank == 4 ? q[0] : 1;
  p.queries = q[base];
  p.heads = q[base + 1];
  p.dim = q[base + 2];
  p.keys = k[base];
  p.kv_heads = k[base + 1];

  if ((rank == 4 && k[0] != p.batch) || k[base + 2] != p.dim) {
    throw Error(fmt::format("{}: k {} does not match q {} in batch or head dim", kKernel,
                            shape_str(k), shape_str(q)));
  }
  if (p.kv_heads <= 0 || p.heads % p.kv_heads != 0) {
    throw Error(
        fmt::format("{}: q has {} heads, which is not a multiple of the {} key/value "
                    "heads of k",
                    kKernel, p.heads, p.kv_heads));
  }
  if (p.dim <= 0) {
    throw Error(fmt::format("{}: head dim must be positive, got q {}", kKernel, shape_str(q)));
  }
  return p;
}

void check_segments(const Problem& p, const std::vector<std::int64_t>& starts) {
  if (starts.empty()) {
    return;
  }
  if (p.queries != p.keys) {
    throw Error(fmt::format("{}: segment_starts needs Sq == Sk, got Sq {} and Sk {}", kKernel,
                            p.queries, p.keys));
  }
  for (std::size_t i = 0; i < starts.size(); ++i) {
    const bool valid = i == 0 ? starts[0] == 0 : starts[i] > starts[i - 1];
    if (!valid || starts[i] >= std::max<std::int64_t>(p.queries, 1)) {
      throw Error(
          fmt::format("{}: segment_starts must start at 0 and increase strictly below "
                      "the sequence length {}; entry {} is {}",
                      kKernel, p.queries, i, starts[i]));
    }
  }
}

void check_options(const Problem& p, const AttentionOptions& options) {
  if (options.scale < 0.0f || !std::isfinite(options.scale)) {
    throw Error(fmt::format("{}: scale must be a finite value >= 0 (0 selects 1/sqrt(D)), got {}",
                            kKernel, options.scale));
  }
  if (options.max_query_tile < 0) {
    throw Error(
        fmt::format("{}: max_query_tile must be >= 0, got {}", kKernel, options.max_query_tile));
  }
  check_segments(p, options.segment_starts);
  const Tensor& mask = options.key_mask;
  if (mask.defined()) {
    const bool shape_ok = (mask.dim() == 1 && mask.size(0) == p.keys) ||
                          (mask.dim() == 2 && mask.size(1) == p.keys &&
                           (mask.size(0) == p.batch || mask.size(0) == 1));
    if (mask.dtype() != DType::uint8 || !shape_ok || !mask.is_contiguous()) {
      throw Error(fmt::format("{}: key_mask must be a contiguous uint8 [{}] or [{}, {}], got {}",
                              kKernel, p.keys, p.batch, p.keys, mask.describe()));
    }
  }
}

// Query tiles inside segment boundaries (one segment when none are given).
std::vector<QueryTile> make_tiles(const Problem& p, const std::vector<std::int64_t>& starts,
                                  std::int64_t tile) {
  std::vector<QueryTile> tiles;
  const std::size_t segments = std::max<std::size_t>(starts.size(), 1);
  for (std::size_t s = 0; s < segments; ++s) {
    const std::int64_t begin = starts.empty() ? 0 : starts[s];
    const std::int64_t end = s + 1 < starts.size() ? starts[s + 1] : p.queries;
    for (std::int64_t row = begin; row < end; row += tile) {
      const std::int64_t key_begin = starts.empty() ? 0 : begin;
      const std::int64_t key_end = starts.empty() ? p.keys : end;
      tiles.push_back({row, std::min(tile, end - row), key_begin, key_end});
    }
  }
  return tiles;
}

std::int64_t longest_segment(const Problem& p, const std::vector<std::int64_t>& starts) {
  std::int64_t longest = starts.empty() ? p.queries : 0;
  for (std::size_t s = 0; s < starts.size(); ++s) {
    const std::int64_t end = s + 1 < starts.size() ? starts[s + 1] : p.queries;
    longest = std::max(longest, end - starts[s]);
  }
  return longest;
}

bool use_bf16_products(DType dtype, AttentionPrecision precision) {
#if defined(ETHEREAL_ATTENTION_BF16)
  return precision == AttentionPrecision::bf16 ||
         (precision == AttentionPrecision::automatic && dtype == DType::bf16);
#else
  return false;
#endif
}

Plan make_plan(const Problem& p, DType dtype, const AttentionOptions& options) {
  Plan plan;
  plan.bf16 = use_bf16_products(dtype, options.precision);
  plan.element_bytes = plan.bf16 ? 2 : 4;
  plan.dim_padded = round_up(p.dim, 16);
  plan.keys_padded = round_up(std::max<std::int64_t>(p.keys, 1), 16);
  plan.workers = omp_in_parallel() ? 1 : thread_count();

  // Tile: the requested (or default) size, no longer than a segment, and halved while there
  // are fewer than two work items per thread in one pass over a key/value head.
  const std::int64_t group = p.heads / p.kv_heads;
  std::int64_t tile = options.max_query_tile > 0 ? options.max_query_tile : kDefaultQueryTile;
  tile = std::max<std::int64_t>(1, std::min(tile, longest_segment(p, options.segment_starts)));
  while (tile > kMinAutomaticQueryTile &&
         static_cast<std::int64_t>(make_tiles(p, options.segment_starts, tile).size()) * group <
             2 * plan.workers) {
    tile = std::max(kMinAutomaticQueryTile, (tile + 1) / 2);
  }
  plan.query_tile = tile;
  plan.tiles = make_tiles(p, options.segment_starts, tile);

  const auto e = static_cast<std::size_t>(plan.element_bytes);
  const auto rows = static_cast<std::size_t>(tile);
  const auto dim = static_cast<std::size_t>(plan.dim_padded);
  const auto block = static_cast<std::size_t>(kKeyBlock);
  std::size_t offset = 0;
  plan.q_offset = offset;
  offset += align_bytes(rows * dim * e);
  plan.scores_offset = offset;
  offset += align_bytes(rows * block * sizeof(float));
  plan.probs_offset = offset;
  offset += align_bytes(rows * block * e);
  plan.out_offset = offset;
  offset += align_bytes(rows * dim * sizeof(float));
  plan.max_offset = offset;
  offset += align_bytes(rows * sizeof(float));
  plan.sum_offset = offset;
  offset += align_bytes(rows * sizeof(float));
  plan.worker_bytes = offset;
  plan.packed_bytes = 2 * align_bytes(static_cast<std::size_t>(plan.keys_padded) * dim * e);
  plan.bias_bytes =
      options.key_mask.defined() ? static_cast<std::size_t>(plan.keys_padded) * sizeof(float) : 0;
  return plan;
}

// Converts row[0, dim) to E in `buffer`, zero-filled up to dim_padded (a multiple of 16); a
// null row gives zeros (a padding key).
template <typename T, typename E>
void convert_row(const T* row, std::int64_t dim, std::int64_t dim_padded, E* buffer) {
  for (std::int64_t i = 0; i < dim_padded; i += kLanes) {
    const int lanes = row != nullptr && i < dim ? chunk_lanes(i, dim) : 0;
    simd::load_chunk(row + (row != nullptr ? i : 0), lanes).store(buffer + i);
  }
}

// A k group (g elements of E) is always 4 bytes: one f32 or a pair of bf16.
template <typename E>
std::uint32_t group_bits(const E* group) {
  std::uint32_t bits;
  std::memcpy(&bits, group, sizeof(bits));
  return bits;
}

// Packs the keys of one head, k[key * key_stride + d], as the B operand of S = Q K^T: column
// blocks of 16 keys, each [D_padded / g][16][g]. Padding keys and dims are zero.
template <typename T, typename E>
void pack_keys(const T* k, std::int64_t key_stride, const Problem& p, const Plan& plan, E* packed) {
  constexpr int g = kGroup<E>;
  const std::int64_t dim_padded = plan.dim_padded;
  parallel_for(0, plan.keys_padded / 16, 1, [&](std::int64_t begin, std::int64_t end) {
    std::vector<E> row(static_cast<std::size_t>(dim_padded));
    for (std::int64_t block = begin; block < end; ++block) {
      auto* out = reinterpret_cast<std::uint32_t*>(packed + block * dim_padded * 16);
      for (std::int64_t c = 0; c < 16; ++c) {
        const std::int64_t key = block * 16 + c;
        convert_row(key < p.keys ? k + key * key_stride : nullptr, p.dim, dim_padded, row.data());
        for (std::int64_t group = 0; group < dim_padded / g; ++group) {
          out[group * 16 + c] = group_bits(row.data() + group * g);
        }
      }
    }
  });
}

// Packs the values of one head as the B operand of O = P V: column blocks of 16 dims, each
// [keys_padded / g][16][g]. Padding keys and dims are zero.
template <typename T, typename E>
void pack_values(const T* v, std::int64_t key_stride, const Problem& p, const Plan& plan,
                 E* packed) {
  constexpr int g = kGroup<E>;
  const std::int64_t dim_padded = plan.dim_padded;
  const std::int64_t block_stride = plan.keys_padded * 16;
  parallel_for(0, plan.keys_padded / 16, 1, [&](std::int64_t begin, std::int64_t end) {
    std::vector<E> first(static_cast<std::size_t>(dim_padded));
    std::vector<E> second(static_cast<std::size_t>(dim_padded));
    for (std::int64_t group = begin * 16 / g; group < end * 16 / g; ++group) {
      const std::int64_t key = group * g;
      convert_row(key < p.keys ? v + key * key_stride : nullptr, p.dim, dim_padded, first.data());
      if constexpr (g == 2) {
        convert_row(key + 1 < p.keys ? v + (key + 1) * key_stride : nullptr, p.dim, dim_padded,
                    second.data());
      }
      for (std::int64_t block = 0; block < dim_padded / 16; ++block) {
        auto* out =
            reinterpret_cast<std::uint32_t*>(packed + block * block_stride + group * 16 * g);
        const E* a = first.data() + block * 16;
        const E* b = second.data() + block * 16;
        for (int c = 0; c < 16; ++c) {
          if constexpr (g == 2) {
            // The pair (v[key][d], v[key + 1][d]), first element in the low half.
            out[c] = static_cast<std::uint32_t>(a[c]) | static_cast<std::uint32_t>(b[c]) << 16;
          } else {
            out[c] = group_bits(a + c);
          }
        }
      }
    }
  });
}

// Everything the work items of one pass over a key/value head share.
template <typename T, typename E>
struct HeadPass {
  const Problem* problem = nullptr;
  const Plan* plan = nullptr;
  bool causal = false;
  const T* q = nullptr;  // q[0, 0, 0] of this batch item
  std::int64_t q_token_stride = 0;
  std::int64_t q_head_stride = 0;
  T* out = nullptr;  // out[0, 0, 0] of this batch item
  const E* packed_keys = nullptr;
  const E* packed_values = nullptr;
  const float* bias = nullptr;  // 0 or -inf per key; null without a key mask
  float scale_log2 = 0.0f;      // softmax scale * log2(e), so that exp becomes exp2
};

// One worker's scratch buffers, carved from its slice of the scratch tensor.
template <typename E>
struct TileBuffers {
  E* q;            // [tile][D_padded]
  float* scores;   // [tile][kKeyBlock]
  E* probs;        // [tile][kKeyBlock]
  float* acc;      // [tile][D_padded], the unnormalised output
  float* row_max;  // [tile], in raw score units
  float* row_sum;  // [tile]

  TileBuffers(std::uint8_t* base, const Plan& plan)
      : q(reinterpret_cast<E*>(base + plan.q_offset)),
        scores(reinterpret_cast<float*>(base + plan.scores_offset)),
        probs(reinterpret_cast<E*>(base + plan.probs_offset)),
        acc(reinterpret_cast<float*>(base + plan.out_offset)),
        row_max(reinterpret_cast<float*>(base + plan.max_offset)),
        row_sum(reinterpret_cast<float*>(base + plan.sum_offset)) {}
};

// Copies the tile's query rows into buf.q as E, zero-padded to D_padded, and resets the
// accumulators.
template <typename T, typename E>
void start_tile(const HeadPass<T, E>& pass, const QueryTile& tile, std::int64_t head,
                const TileBuffers<E>& buf) {
  const std::int64_t dim = pass.problem->dim;
  const std::int64_t dim_padded = pass.plan->dim_padded;
  for (std::int64_t r = 0; r < tile.rows; ++r) {
    const T* row = pass.q + (tile.start + r) * pass.q_token_stride + head * pass.q_head_stride;
    for (std::int64_t i = 0; i < dim_padded; i += kLanes) {
      const int lanes = i < dim ? chunk_lanes(i, dim) : 0;
      simd::load_chunk(row + i, lanes).store(buf.q + r * dim_padded + i);
    }
  }
  std::fill(buf.acc, buf.acc + tile.rows * dim_padded, 0.0f);
  std::fill(buf.row_max, buf.row_max + tile.rows, -std::numeric_limits<float>::infinity());
  std::fill(buf.row_sum, buf.row_sum + tile.rows, 0.0f);
}

// Last key (exclusive) that query row `query` may attend to within `tile`.
template <typename T, typename E>
std::int64_t key_limit(const HeadPass<T, E>& pass, const QueryTile& tile, std::int64_t query) {
  if (!pass.causal) {
    return tile.key_end;
  }
  const Problem& p = *pass.problem;
  return std::min(tile.key_end, query + (p.keys - p.queries) + 1);
}

// 2^x for the exponents of the softmax, which are <= 0 or -inf. Probabilities that are rounded
// to bf16 afterwards (relative step 2^-9) take a degree-5 polynomial (error about 2.4e-6)
// without the NaN and overflow handling of simd::exp2; f32 probabilities use simd::exp2.
template <typename E>
Vec16 probability_exp2(Vec16 x) {
#if defined(ETHEREAL_SIMD_AVX512)
  if constexpr (sizeof(E) == 2) {
    const __m512 clamped = simd::detail::max_ps(x.v, _mm512_set1_ps(-160.0f));
    const __m512 n = simd::detail::round_nearest_ps(clamped);
    const __m512 f = _mm512_sub_ps(clamped, n);
    __m512 p = _mm512_set1_ps(1.3333558146428443e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return Vec16(simd::detail::scale_by_power_of_two(p, n));
  }
#endif
  return simd::exp2(x);
}

// Online-softmax update for one score block of `cols` keys starting at key `block_start`:
// masks the scores, raises the running row maxima, writes P = exp(scale (s - max)) as E, and
// rescales the running sums and output rows by exp(scale (old max - new max)).
template <typename T, typename E>
void softmax_block(const HeadPass<T, E>& pass, const QueryTile& tile, const TileBuffers<E>& buf,
                   std::int64_t block_start, std::int64_t cols) {
  constexpr float kNegativeInfinity = -std::numeric_limits<float>::infinity();
  const std::int64_t dim_padded = pass.plan->dim_padded;
  for (std::int64_t r = 0; r < tile.rows; ++r) {
    float* scores = buf.scores + r * kKeyBlock;
    E* probs = buf.probs + r * kKeyBlock;
    const std::int64_t first = std::clamp<std::int64_t>(tile.key_begin - block_start, 0, cols);
    const std::int64_t last =
        std::clamp<std::int64_t>(key_limit(pass, tile, tile.start + r) - block_start, 0, cols);
    if (last <= first) {
      std::fill(probs, probs + cols, E{0});
      continue;
    }
    std::fill(scores, scores + first, kNegativeInfinity);
    std::fill(scores + last, scores + cols, kNegativeInfinity);
    if (pass.bias != nullptr) {
      for (std::int64_t j = first; j < last; ++j) {
        scores[j] += pass.bias[block_start + j];
      }
    }
    Vec16 block_max(kNegativeInfinity);
    for (std::int64_t j = 0; j < cols; j += kLanes) {
      block_max = simd::max(block_max, Vec16::load(scores + j));
    }
    const float old_max = buf.row_max[r];
    const float new_max = std::max(old_max, simd::reduce_max(block_max));
    if (new_max == kNegativeInfinity) {
      std::fill(probs, probs + cols, E{0});
      continue;
    }
    const Vec16 scale(pass.scale_log2);
    const Vec16 offset(-new_max * pass.scale_log2);
    Vec16 sum;
    for (std::int64_t j = 0; j < cols; j += kLanes) {
      const Vec16 p = probability_exp2<E>(simd::fma(Vec16::load(scores + j), scale, offset));
      sum += p;
      p.store(probs + j);
    }
    const float correction =
        old_max == kNegativeInfinity ? 0.0f : std::exp2((old_max - new_max) * pass.scale_log2);
    buf.row_sum[r] = buf.row_sum[r] * correction + simd::reduce_add(sum);
    buf.row_max[r] = new_max;
    if (correction != 1.0f) {
      float* acc = buf.acc + r * dim_padded;
      for (std::int64_t i = 0; i < dim_padded; i += kLanes) {
        (Vec16::load(acc + i) * Vec16(correction)).store(acc + i);
      }
    }
  }
}

// Writes acc / row_sum for the tile's rows into the output (zeros for rows without keys).
template <typename T, typename E>
void finish_tile(const HeadPass<T, E>& pass, const QueryTile& tile, std::int64_t head,
                 const TileBuffers<E>& buf) {
  const Problem& p = *pass.problem;
  for (std::int64_t r = 0; r < tile.rows; ++r) {
    const float sum = buf.row_sum[r];
    const Vec16 inverse(sum > 0.0f ? 1.0f / sum : 0.0f);
    const float* acc = buf.acc + r * pass.plan->dim_padded;
    T* out = pass.out + ((tile.start + r) * p.heads + head) * p.dim;
    for (std::int64_t i = 0; i < p.dim; i += kLanes) {
      const int lanes = chunk_lanes(i, p.dim);
      simd::store_chunk(out + i, Vec16::load(acc + i) * inverse, lanes);
    }
  }
}

// One work item: query rows `tile` of query head `head` against its key range.
template <typename T, typename E>
void process_tile(const HeadPass<T, E>& pass, const QueryTile& tile, std::int64_t head,
                  const TileBuffers<E>& buf) {
  constexpr int g = kGroup<E>;
  const Plan& plan = *pass.plan;
  start_tile(pass, tile, head, buf);
  const std::int64_t key_end = key_limit(pass, tile, tile.start + tile.rows - 1);
  const std::int64_t block_end = round_up(key_end, 16);
  for (std::int64_t block_start = tile.key_begin / 16 * 16; block_start < key_end;
       block_start += kKeyBlock) {
    const std::int64_t cols = std::min(kKeyBlock, block_end - block_start);

    GemmArgs<E> scores;  // S = Q K^T
    scores.a = buf.q;
    scores.lda = plan.dim_padded;
    scores.b = pass.packed_keys + block_start * plan.dim_padded;
    scores.block_stride = plan.dim_padded * 16;
    scores.k_groups = plan.dim_padded / g;
    scores.c = buf.scores;
    scores.ldc = kKeyBlock;
    attention_detail::gemm(scores, tile.rows, cols / 16);

    softmax_block(pass, tile, buf, block_start, cols);

    GemmArgs<E> values;  // acc += P V
    values.a = buf.probs;
    values.lda = kKeyBlock;
    values.b = pass.packed_values + block_start * 16;
    values.block_stride = plan.keys_padded * 16;
    values.k_groups = cols / g;
    values.c = buf.acc;
    values.ldc = plan.dim_padded;
    values.accumulate = true;
    attention_detail::gemm(values, tile.rows, plan.dim_padded / 16);
  }
  finish_tile(pass, tile, head, buf);
}

// Row of the key mask for batch item `b` turned into 0 / -inf per padded key.
void fill_bias(const Tensor& mask, std::int64_t b, const Problem& p, const Plan& plan,
               float* bias) {
  const std::uint8_t* row =
      mask.data_as<std::uint8_t>() + (mask.dim() == 2 && mask.size(0) > 1 ? b * p.keys : 0);
  for (std::int64_t j = 0; j < plan.keys_padded; ++j) {
    bias[j] = j < p.keys && row[j] != 0 ? 0.0f : -std::numeric_limits<float>::infinity();
  }
}

// Buffers of one call, allocated in the same order in real and dry runs.
struct Workspace {
  Tensor packed;
  Tensor scratch;
  Tensor bias;

  explicit Workspace(const Plan& plan) {
    packed = Tensor::empty({static_cast<std::int64_t>(plan.packed_bytes)}, DType::uint8);
    scratch =
        Tensor::empty({static_cast<std::int64_t>(plan.worker_bytes * plan.workers)}, DType::uint8);
    if (plan.bias_bytes > 0) {
      bias = Tensor::empty({plan.keys_padded}, DType::f32);
    }
  }
};

template <typename T, typename E>
void run_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                   const Problem& p, const Plan& plan, const AttentionOptions& options,
                   const Workspace& workspace) {
  const std::int64_t token_axis = q.dim() == 4 ? 1 : 0;
  E* packed_keys = workspace.packed.data_as<E>();
  E* packed_values =
      reinterpret_cast<E*>(workspace.packed.data_as<std::uint8_t>() + plan.packed_bytes / 2);
  float* bias = options.key_mask.defined() ? workspace.bias.data_as<float>() : nullptr;
  std::uint8_t* scratch = workspace.scratch.data_as<std::uint8_t>();
  const std::int64_t group = p.heads / p.kv_heads;
  const float scale =
      options.scale > 0.0f ? options.scale : 1.0f / std::sqrt(static_cast<float>(p.dim));

  for (std::int64_t b = 0; b < p.batch; ++b) {
    const Tensor q_b = q.dim() == 4 ? q.select(0, b) : q;
    const Tensor k_b = k.dim() == 4 ? k.select(0, b) : k;
    const Tensor v_b = v.dim() == 4 ? v.select(0, b) : v;
    if (bias != nullptr) {
      fill_bias(options.key_mask, b, p, plan, bias);
    }
    HeadPass<T, E> pass;
    pass.problem = &p;
    pass.plan = &plan;
    pass.causal = options.causal;
    pass.q = q_b.data_as<T>();
    pass.q_token_stride = q.stride(token_axis);
    pass.q_head_stride = q.stride(token_axis + 1);
    pass.out = out.data_as<T>() + b * p.queries * p.heads * p.dim;
    pass.packed_keys = packed_keys;
    pass.packed_values = packed_values;
    pass.bias = bias;
    pass.scale_log2 = scale * kLog2e;
    for (std::int64_t kv_head = 0; kv_head < p.kv_heads; ++kv_head) {
      pack_keys(k_b.data_as<T>() + kv_head * k.stride(token_axis + 1), k.stride(token_axis), p,
                plan, packed_keys);
      pack_values(v_b.data_as<T>() + kv_head * v.stride(token_axis + 1), v.stride(token_axis), p,
                  plan, packed_values);
      const auto items = static_cast<std::int64_t>(plan.tiles.size()) * group;
      parallel_for(0, items, 1, [&](std::int64_t begin, std::int64_t end) {
        // plan.workers is 1 when called inside a parallel region, where the id may be larger.
        const int slot = plan.workers == 1 ? 0 : omp_get_thread_num();
        const TileBuffers<E> buf(scratch + static_cast<std::size_t>(slot) * plan.worker_bytes,
                                 plan);
        for (std::int64_t item = begin; item < end; ++item) {
          const QueryTile& tile = plan.tiles[static_cast<std::size_t>(item / group)];
          process_tile(pass, tile, kv_head * group + item % group, buf);
        }
      });
    }
  }
}

void check_tensors(const Tensor& q, const Tensor& k, const Tensor& v) {
  support::require_float(kKernel, "q", q);
  support::require_float(kKernel, "k", k);
  support::require_float(kKernel, "v", v);
  if (k.dtype() != q.dtype() || v.dtype() != q.dtype()) {
    throw Error(fmt::format("{}: q {}, k {} and v {} must have the same dtype", kKernel,
                            q.describe(), k.describe(), v.describe()));
  }
  support::require_unit_last_stride(kKernel, "q", q);
  support::require_unit_last_stride(kKernel, "k", k);
  support::require_unit_last_stride(kKernel, "v", v);
}

}  // namespace

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v,
                 const AttentionOptions& options) {
  check_tensors(q, k, v);
  const Problem p = describe_problem(q.shape(), k.shape(), v.shape());
  check_options(p, options);
  const Plan plan = make_plan(p, q.dtype(), options);
  Tensor out = Tensor::empty(q.shape(), q.dtype());
  const Workspace workspace(plan);
  if (support::skip_compute(q, k, v, options.key_mask) || out.numel() == 0) {
    return out;
  }
  support::dispatch_float(q.dtype(), [&](auto element) {
    using T = decltype(element);
#if defined(ETHEREAL_ATTENTION_BF16)
    if (plan.bf16) {
      run_attention<T, bf16_t>(q, k, v, out, p, plan, options, workspace);
      return;
    }
#endif
    run_attention<T, float>(q, k, v, out, p, plan, options, workspace);
  });
  return out;
}

std::size_t attention_workspace_bytes(const Shape& q_shape, const Shape& k_shape, DType dtype,
                                      const AttentionOptions& options) {
  const Problem p = describe_problem(q_shape, k_shape, k_shape);
  check_options(p, options);
  const Plan plan = make_plan(p, dtype, options);
  return plan.packed_bytes + plan.worker_bytes * static_cast<std::size_t>(plan.workers) +
         plan.bias_bytes;
}

}  // namespace ethereal::cpu
