// Dequantisation straight into the blocked weight layout of oneDNN's matmul.
//
// The large-batch path of QuantizedLinear decodes the quantised weight into the packed layout
// that oneDNN's bf16 matmul reads (cpu::PackedLayout), then runs the matmul. Writing the
// packed layout directly avoids a plain bf16 copy plus a oneDNN reorder, which together cost
// several times the decoding itself.
//
// Fast path: bf16 "BA16a64b2a" (the layout oneDNN 2.6 picks on AVX-512 BF16 machines). Each
// 64 x 32 tile (64 output channels, 32 input features) is decoded 16 channels at a time into 16
// registers of 32 bf16 values. Read as 16 pairs of features, that is a 16 x 16 matrix of 32-bit
// words, and one in-register transpose turns it into the 16 rows of 64-byte pairs that the
// layout stores contiguously. Other layouts and builds without AVX-512 BF16 use the generic
// path, which writes element by element through PackedLayout::element_offset.
#pragma once

#include <cstdint>

#include "kernels/cpu/linear.h"
#include "quant/quant_format.h"

namespace ethereal::quant {

// Writes W[first_row + j, k] for j < layout.n and k < layout.k into `packed` (layout.bytes
// bytes) as dequantised values rounded to layout.dtype (f32 or bf16), and zeros into the
// padding. Requires layout.k == in_features and first_row + layout.n <= out_features; `weight`
// must be validated and not dry. Runs on the thread pool.
void dequantize_to_packed(const QuantizedWeight& weight, std::int64_t first_row,
                          const cpu::PackedLayout& layout, void* packed);

// The element-by-element path for any layout; dequantize_to_packed uses it where it has no
// fast path. Its output is bit-identical to the fast path's.
void dequantize_to_packed_generic(const QuantizedWeight& weight, std::int64_t first_row,
                                  const cpu::PackedLayout& layout, void* packed);

// True when dequantize_to_packed has a fast path for `layout` in this build.
bool has_fast_packed_path(const cpu::PackedLayout& layout);

}  // namespace ethereal::quant
