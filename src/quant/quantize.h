// Quantisation of one weight matrix [out_features, in_features] to fp8_e4m3, int8 or nf4, and
// dequantisation back to f32 or bf16.
//
// All formats round to nearest: fp8 and int8 to nearest even after dividing by the scale, nf4 to
// the nearest codebook value after dividing by the decoded block absmax (ties go to the lower
// code). quant_format.h describes the stored layouts; docs/quantization.md the error bounds.
// Work is parallel over rows (fp8, int8) or blocks (nf4).
//
// Dry run: when dry_run_active() or the weight is dry, the same tensors are allocated in the
// same order and left unfilled.
#pragma once

#include "quant/quant_format.h"
#include "runtime/tensor.h"

namespace ethereal::quant {

struct QuantizeOptions {
  // Scale granularity of fp8_e4m3; int8 is always per channel and nf4 per block.
  ScaleGranularity fp8_scales = ScaleGranularity::per_channel;
};

// `weight` is a 2-D f32, bf16 or f16 tensor [out_features, in_features] with any strides.
// Throws InvalidInputError for another rank or dtype, or when a value is not finite (naming its
// row and column).
QuantizedWeight quantize(const Tensor& weight, QuantFormat format,
                         const QuantizeOptions& options = {});
QuantizedWeight quantize_fp8_e4m3(const Tensor& weight, ScaleGranularity granularity);
QuantizedWeight quantize_int8(const Tensor& weight);
QuantizedWeight quantize_nf4(const Tensor& weight);

// The scales of quantize(weight, format, options) without its values, for writers that need
// the scales first: fp8 and int8 `scales`, or every part of nf4's `nf4` (absmax codes
// included), with the same bytes as quantize() gives. `values` stays undefined, so the result
// is not a valid QuantizedWeight. It reads the weight once and encodes no value. Throws like
// quantize().
QuantizedWeight compute_scales(const Tensor& weight, QuantFormat format,
                               const QuantizeOptions& options = {});

// W [out_features, in_features] in `dtype` (f32 or bf16; bf16 rounds the f32 value to nearest
// even, which is what the quantised linear kernels compute with).
Tensor dequantize(const QuantizedWeight& weight, DType dtype = DType::f32);

// The decoded absmax of every nf4 block: f32 [nf4_block_count()].
Tensor nf4_block_absmax(const QuantizedWeight& weight);

}  // namespace ethereal::quant
