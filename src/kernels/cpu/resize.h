// Resampling of channel-first images.
#pragma once

#include "runtime/tensor.h"

namespace ethereal::cpu {

// Nearest-neighbour upsampling by 2 along the last two axes: x [..., H, W] (for example
// [N, C, H, W]) -> [..., 2H, 2W] with y[..., i, j] = x[..., i / 2, j / 2] (PyTorch's "nearest"
// and "nearest-exact" agree for a factor of 2). Accepts any dtype of at least one byte and any
// strides. Returns a new contiguous tensor, which a dry run only allocates.
Tensor upsample_nearest2x(const Tensor& x);

}  // namespace ethereal::cpu
