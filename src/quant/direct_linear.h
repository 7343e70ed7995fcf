// The small-batch path of QuantizedLinear: y = x W^T + b computed straight from the quantised
// weights, for inputs with few rows, where reading the weights dominates the time.
//
// The kernels run on AVX-512 BF16 (vdpbf16ps: 32 bf16 products per instruction, f32
// accumulation) and in parallel over tiles of output channels:
//
// Register kernel (1 to 8 rows, except nf4 whose in_features is not a multiple of 128): tiles
// of 8 channels for 1 row, 4 for 2 rows and for 3 or 4 rows of fp8 and int8, else 2. The
// weights are decoded in registers, 64 (fp8, int8) or 128 (nf4) at a time, and multiplied with
// every row right away. With 3 to 8 rows the channels of a tile advance together, into rows x
// channels accumulators. With 1 and 2 rows they are taken one after another, so that each
// thread reads one sequential stream of codes. On the 2-core Zen 5 VM of
// docs/benchmarks/quant.md, this cut the time of fp8 at 1 row by about 20%.
//
// Buffered kernel (9 rows or more, and nf4 whose in_features is not a multiple of 128): tiles
// of 4 channels. Up to 3072 columns of the tile are decoded once into a bf16 buffer on the
// stack (24 KiB). The buffer is multiplied with up to 60 rows, in micro-tiles of up to 6 rows x
// 4 channels whose 24 accumulators stay in registers.
//
// Both prefetch the next tile's codes into the L2 cache while they compute the current tile, a
// cache line for each one read. Without this, a one-row prototype read nf4 weights at about 40%
// of the streaming read bandwidth of the 2-core Zen 4 VM of docs/benchmarks/quant.md, against
// 75 to 85% with it (one run on the loaded machine).
//
// Cost, measured on that VM with one thread and the weights in the cache: one chunk of one
// channel with M rows took about 2 M + 4 to 7 vdpbf16ps throughput times for fp8 and int8 (64
// codes), and 4 M + 11 to 19 for nf4 (128 codes). So decoding adds to the multiplications
// rather than overlapping them. Reading a chunk from memory takes about 10 such times per
// core, so the kernels are compute-bound from about 3 rows for fp8 and int8 and from 1 row for
// nf4. NOTE: these are estimates from timings on a shared machine without hardware counters. A
// buffered kernel that decoded the next block between the multiplications of the micro-tiles
// ran no faster there.
//
// Decoders (the input x is permuted once per call into the order in which they produce values):
//   fp8, int8: a 128-entry table lookup (vpermt2b) gives the high and the low byte of the bf16
//     of each code's magnitude, the sign bit is copied, and the two bytes are interleaved. A
//     row's last, partial chunk of 64 is read with a masked load.
//   nf4 (in_features a multiple of 128): one 64-byte load is 128 codes of two blocks. The bf16
//     values of both blocks' 16 codes form one 32-entry table for vpermw, whose index is a code
//     shifted out of its 16-bit word plus a bit that selects the block.
//   nf4 otherwise: 32 elements at a time in natural order through weight_decoder.h.
//
// Precision: the input is rounded to bf16, as in the bf16 oneDNN linear, and accumulation is
// f32. fp8 and int8 codes are exact in bf16, so their products are exact and the scale
// multiplies the f32 sum of each channel. nf4 multiplies bf16(codebook value * block absmax),
// the same bf16 weights as dequantize(weight, DType::bf16). The fp8 NaN codes (0x7F, 0xFF)
// decode as NaN. Without AVX-512 BF16, a scalar loop computes the same values.
#pragma once

#include <cstdint>

#include "quant/quant_format.h"
#include "runtime/tensor.h"

namespace ethereal::quant::detail {

// Order of the elements of the prepared input within each chunk, which matches the order in
// which the decoders produce weights (see direct_linear.cpp).
enum class InputOrder : std::uint8_t {
  natural,     // chunks of 32: nf4 with in_features not a multiple of 128, and builds without
               // AVX-512 BF16
  bytes64,     // fp8 and int8, chunks of 64
  nibbles128,  // nf4 with in_features a multiple of 128, chunks of 128
};

struct DirectPlan {
  std::int64_t rows = 0;
  InputOrder order = InputOrder::natural;
  std::int64_t chunk = 32;   // elements per chunk of `order`
  std::int64_t columns = 0;  // in_features rounded up to `chunk`: the columns multiplied
  // Row length of the prepared input: `columns`, plus 32 zeros where that makes the rows an odd
  // number of 64-byte cache lines long, so that rows read together use different L1 cache sets.
  std::int64_t padded_k = 0;
};

DirectPlan plan_direct(const QuantizedWeight& weight, std::int64_t rows);

// Writes x (contiguous [plan.rows, in_features], f32 or bf16) into x_bf16 (contiguous bf16
// [plan.rows, plan.padded_k]): rounded to bf16, permuted into plan.order, zero-padded.
void prepare_direct_input(const Tensor& x, const DirectPlan& plan, const Tensor& x_bf16);

// out[m, n] = sum_k x[m, k] W[n, k] + bias[n]. x_bf16: from prepare_direct_input. bias: f32
// [out_features] or null. out: contiguous [plan.rows, out_features], f32 or bf16. `weight` must
// be validated and not dry.
void direct_linear(const QuantizedWeight& weight, const DirectPlan& plan, const Tensor& x_bf16,
                   const float* bias, const Tensor& out);

}  // namespace ethereal::quant::detail
