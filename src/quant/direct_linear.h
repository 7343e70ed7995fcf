// The small-batch path of QuantizedLinear: y = x W^T + b computed straight from the quantised
// weights, for inputs with few rows, where reading the weights dominates the time.
//
// Work is split over groups of 8 output channels. For each group, the input rows are taken in
// tiles of 8, 4, 2 or 1 rows, and the channels in sub-groups of 2, 4, 4 or 8. The weights of a
// sub-group are decoded to bf16 in registers, 32 or 64 at a time. vdpbf16ps (AVX-512 BF16: 32
// products per instruction, f32 accumulation) multiplies them with every row of the tile into
// 8 to 16 accumulators held in registers. Each weight is decoded once per tile: once for up to 8
// rows, twice for 16, three times for 13 (8 + 4 + 1). Nothing the size of the weight is allocated.
//
// The decoded "direct values" are:
//   int8: the integer q.
//   fp8:  v * 2^-8, because its bits move straight into a bf16 (see fp8_direct32).
//   nf4:  codebook value * block absmax, rounded to bf16.
// A per-channel factor (int8: scale; fp8: scale * 256; nf4: 1) multiplies the f32 sum at the
// end, so fp8 and int8 products are exact. For nf4 with in_features a multiple of 64, a block's
// 32 bytes are decoded as the 32 even elements (low nibbles) and the 32 odd elements (high
// nibbles). The input is permuted the same way once per call, which saves interleaving nibbles.
//
// Precision: the input is rounded to bf16, as in the bf16 oneDNN linear. Accumulation is f32.
#pragma once

#include <cstdint>

#include "quant/quant_format.h"
#include "runtime/tensor.h"

namespace ethereal::quant::detail {

struct DirectPlan {
  std::int64_t rows = 0;
  // Elements decoded per step: 64 when in_features is a multiple of 64, else 32.
  std::int64_t step = 32;
  std::int64_t padded_k = 0;  // in_features rounded up to `step`
  // True for nf4 with step 64: the input is permuted within blocks of 64 (see above).
  bool permuted_input = false;
};

DirectPlan plan_direct(const QuantizedWeight& weight, std::int64_t rows);

// Writes x (contiguous [plan.rows, in_features], f32 or bf16) into x_bf16 (contiguous bf16
// [plan.rows, plan.padded_k]): rounded to bf16, permuted if plan.permuted_input, zero-padded.
void prepare_direct_input(const Tensor& x, const DirectPlan& plan, const Tensor& x_bf16);

// out[m, n] = sum_k x[m, k] W[n, k] + bias[n]. x_bf16: from prepare_direct_input. bias: f32
// [out_features] or null. out: contiguous [plan.rows, out_features], f32 or bf16. `weight` must
// be validated and not dry.
void direct_linear(const QuantizedWeight& weight, const DirectPlan& plan, const Tensor& x_bf16,
                   const float* bias, const Tensor& out);

}  // namespace ethereal::quant::detail
