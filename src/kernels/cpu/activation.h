// Element-wise activations: GELU (tanh approximation and exact erf form), SiLU, and the
// SwiGLU product silu(gate) * up of the Qwen2.5-VL MLPs.
//
// Inputs are f32 or bf16 with stride 1 on the last axis. Leading axes may be strided views, so
// the two halves of a fused [S, 2F] projection can be passed as narrow() views. Arithmetic is
// f32 with one rounding to the output dtype. Out-of-place forms return a new contiguous tensor
// of the input's dtype, and the `_` forms overwrite their argument. In a dry run nothing is
// computed.
#pragma once

#include "runtime/tensor.h"

namespace ethereal::cpu {

// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), evaluated as x * sigmoid(2 u).
Tensor gelu_tanh(const Tensor& x);
void gelu_tanh_(Tensor& x);

// 0.5 x (1 + erf(x / sqrt(2))).
Tensor gelu_erf(const Tensor& x);
void gelu_erf_(Tensor& x);

// x * sigmoid(x).
Tensor silu(const Tensor& x);
void silu_(Tensor& x);

// silu(gate) * up for two tensors of the same shape. The result has gate's dtype.
Tensor swiglu(const Tensor& gate, const Tensor& up);
// Writes silu(gate) * up into `gate`.
void swiglu_(Tensor& gate, const Tensor& up);

}  // namespace ethereal::cpu
