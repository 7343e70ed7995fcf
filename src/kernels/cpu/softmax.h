// Numerically stable softmax over the last axis: y = exp(x - max) / sum(exp(x - max)).
//
// Inputs are f32 or bf16 with stride 1 on the last axis (leading axes may be strided). f32
// arithmetic, one rounding to the output dtype. A row whose entries are all -inf gives NaN, as
// in PyTorch. In a dry run nothing is computed.
#pragma once

#include "runtime/tensor.h"

namespace ethereal::cpu {

// Returns a new contiguous tensor of x's dtype.
Tensor softmax(const Tensor& x);
void softmax_(Tensor& x);

}  // namespace ethereal::cpu
