// Batched matrix products of two activations (attention scores, attention-weighted values)
// on oneDNN's matmul primitive. For a product with a weight, use PackedLinear (linear.h),
// which packs the weight once.
//
// Strides: inputs are passed to oneDNN with their strides when oneDNN has a fast kernel for
// them. oneDNN 2.6 picks its brgemm kernels for row-major or column-major matrices with any
// batch stride, and a JIT gemm for padded rows or interleaved batches. For broadcast batch
// dimensions it has only a slow reference kernel, so then both inputs are first copied to
// contiguous tensors with the broadcast expanded (the copies come from the current allocator).
// A batch-free b with a contiguous a needs no copy: a's batch folds into its rows.
#pragma once

#include "runtime/tensor.h"

namespace ethereal::cpu {

// Returns alpha * a x b, or alpha * a x b^T when transpose_b. Shapes: a [B..., M, K], b
// [B..., K, N] or [B..., N, K] when transpose_b, output [B..., M, N]. Batch dimensions
// broadcast NumPy-style: a missing or size-1 dimension repeats. Both inputs are f32 or both
// bf16, accumulation is f32, and the output has a's dtype.
Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_b = false, float alpha = 1.0f);

}  // namespace ethereal::cpu
