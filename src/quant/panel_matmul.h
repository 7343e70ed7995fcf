// oneDNN bf16 matmul over one panel of dequantised weights, for QuantizedLinear's large-batch
// path.
//
// A panel is `width` consecutive output channels (a multiple of 64, or the rest of N). Its
// weights live in a caller-owned buffer in oneDNN's packed layout for a [K, width] matrix; the
// dequantiser fills it through layout(). oneDNN 2.6 only runs its brgemm kernels when the
// destination is dense, so each panel writes a dense [rows, width] tensor, which the caller
// copies into its columns of the output when there is more than one panel.
#pragma once

#include <cstdint>
#include <memory>

#include "kernels/cpu/linear.h"
#include "runtime/tensor.h"

namespace ethereal::quant::detail {

class PanelMatmul {
 public:
  // Asks oneDNN for its packed bf16 weight layout of a [k, width] matrix.
  PanelMatmul(std::int64_t k, std::int64_t width, bool has_bias);

  const cpu::PackedLayout& layout() const { return layout_; }

  // Bytes of the user scratchpad the matmul needs for `rows` rows and a `dst_dtype` output.
  std::size_t scratchpad_bytes(std::int64_t rows, DType dst_dtype) const;

  // Computes dst = src x weights + bias.
  //   src: bf16 [rows, k], contiguous.
  //   packed: the weights in layout(), at least layout().bytes bytes.
  //   bias: f32 [1, width], contiguous, or undefined without bias (as in the constructor).
  //   dst: dense [rows, width], f32 or bf16.
  //   scratchpad: at least scratchpad_bytes() bytes, or undefined when that is 0.
  // Allocates only on the fallback path where oneDNN rejects the packed layout (a reordered copy
  // of the panel). With `execute` false it allocates the same and computes nothing.
  void run(const Tensor& src, const Tensor& packed, const Tensor& bias, const Tensor& dst,
           const Tensor& scratchpad, bool execute) const;

  struct Primitives;  // defined in panel_matmul.cpp

 private:
  std::int64_t k_ = 0;
  std::int64_t width_ = 0;
  bool has_bias_ = false;
  cpu::PackedLayout layout_;
  std::shared_ptr<Primitives> primitives_;
};

}  // namespace ethereal::quant::detail
