// Small tensor operations the VAE needs besides the shared kernels: layout changes between
// channel-first images and channel-last rows, clamping, window copies, and the per-channel
// latent normalisation.
//
// All take contiguous f32 or bf16 tensors (the layout ops copy raw elements, so any 2- or
// 4-byte dtype works there), return new tensors from the current allocator, and only allocate
// in a dry run, like the kernels.
#pragma once

#include <cstdint>
#include <span>

#include "runtime/tensor.h"

namespace ethereal::vae_ops {

// [1, C, H, W] -> [H * W, C]: one row of channels per pixel, pixels in row-major order.
Tensor channels_to_rows(const Tensor& x);
// [H * W, C] -> [1, C, H, W], the inverse of channels_to_rows.
Tensor rows_to_channels(const Tensor& rows, std::int64_t height, std::int64_t width);

// Nearest-neighbour upsampling by 2 of x [1, C, H, W] into channel-last storage: returns a
// [1, C, 2H, 2W] view with strides [4HWC, 1, 2WC, C]. The convolutions run on channel-last
// data, so they read this view without the layout copy that a channel-first input costs.
Tensor upsample_nearest2x_channels_last(const Tensor& x);

// Clamps every element of `x` to [low, high] in place.
void clamp_(Tensor& x, float low, float high);

// The window [top, top + height) x [left, left + width) of x [1, C, H, W] as a new contiguous
// [1, C, height, width] tensor.
Tensor crop(const Tensor& x, std::int64_t top, std::int64_t left, std::int64_t height,
            std::int64_t width);

// y[0, c] = (x[0, c] - shift[c]) / divisor[c] for x [1, C, H, W], computed in f32 with one
// rounding to x's dtype.
Tensor subtract_divide_channels(const Tensor& x, std::span<const float> shift,
                                std::span<const float> divisor);
// y[0, c] = x[0, c] * factor[c] + shift[c] for x [1, C, H, W], computed in f32.
Tensor multiply_add_channels(const Tensor& x, std::span<const float> factor,
                             std::span<const float> shift);

}  // namespace ethereal::vae_ops
