// Multi-head scaled dot-product attention on the CPU, without materialising the score matrix.
//
// Shapes: q [Sq, H, D], k and v [Sk, Hkv, D] (or with a leading batch axis [B, ...] on all
// three). H must be a multiple of Hkv (grouped-query attention: query head h reads key/value
// head h / (H / Hkv)). The output is a new contiguous [Sq, H, D] (or [B, Sq, H, D]) tensor in
// q's dtype. q, k and v must share one dtype (f32 or bf16) and have stride 1 on the last axis.
// The other axes may be strided, so q, k and v can be views into a fused [S, 3, H, D]
// projection output.
//
// Algorithm (flash-attention style): for one key/value head at a time, K and V are converted
// and packed into the micro-kernel layout. Then every (query head, query tile) pair is one work
// item on the thread pool. A work item walks the key blocks of its range, computes the score
// block S = Q K^T with a register-blocked GEMM micro-kernel, updates running row maxima and
// sums (online softmax) and accumulates P V into an f32 output tile. Only [tile, key block]
// scores exist at any time.
//
// Precision: with bf16 inputs (or AttentionPrecision::bf16) and a CPU with AVX512-BF16 the two
// products use bf16 operands with f32 accumulation (vdpbf16ps), and the probabilities P are
// rounded to bf16 before P V, while the softmax itself is f32. Otherwise both products are f32.
//
// Working memory: all of it comes from the current allocator through Tensor::empty, in the
// same sizes and order in a dry run (where nothing is computed), and is released on return.
// It is the packed K and V of one key/value head, one scratch area per pool thread (a query
// tile, a score block, a probability block and an output accumulator), and a key-mask bias
// vector when a mask is given. attention_workspace_bytes() returns the total, and lowering
// AttentionOptions::max_query_tile shrinks the per-thread part.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "runtime/tensor.h"

namespace ethereal::cpu {

enum class AttentionPrecision {
  // bf16 products for bf16 inputs when the CPU supports them, f32 otherwise.
  automatic,
  // bf16 products also for f32 inputs (faster, about 3 significant digits in the products).
  // Falls back to f32 on a build without AVX512-BF16.
  bf16,
  f32,
};

struct AttentionOptions {
  // Softmax scale, where 0 selects 1 / sqrt(D). Must not be negative.
  float scale = 0.0f;
  // Query i attends to keys j <= i + (Sk - Sq): the causal mask aligned at the end of the key
  // sequence, which is the usual mask when Sq == Sk and also right for a key cache.
  bool causal = false;
  // Optional uint8 [Sk] (or [B, Sk] for batched inputs): keys with a 0 entry are ignored.
  Tensor key_mask;
  // Optional starts of packed variable-length sequences (the cu_seqlens of the vision tower's
  // window attention, without the final total): strictly increasing, the first 0, all below S.
  // Requires Sq == Sk. A token attends only to keys of its own segment.
  std::vector<std::int64_t> segment_starts;
  // Maximum query rows per work item, where 0 selects the default (96). Smaller tiles need less
  // working memory per thread. The kernel may also choose smaller tiles to keep every thread
  // busy.
  std::int64_t max_query_tile = 0;
  AttentionPrecision precision = AttentionPrecision::automatic;
};

// Rows whose keys are all masked out (by key_mask, causal with Sk < Sq, or an empty range)
// produce zeros, not NaN.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v,
                 const AttentionOptions& options = {});

// Bytes of working memory (besides the output) that attention() requests from the allocator
// for these shapes and dtype, with the current thread count. Allocator rounding comes on top.
std::size_t attention_workspace_bytes(const Shape& q_shape, const Shape& k_shape, DType dtype,
                                      const AttentionOptions& options = {});

}  // namespace ethereal::cpu
