// Adaptive-norm modulation of the diffusion transformer: y = x * (1 + scale) + shift, the fused
// LayerNorm-then-modulate, and the gated residual x += gate * y.
//
// x is [S, D] (one sample) or [B, S, D]. Each per-channel parameter (shift, scale, gate) is a
// [D] vector shared by all samples or a [B, D] matrix with one row per sample. Rows may be
// strided views (for example chunks of the [B, 6D] output of the modulation linear), but the
// channel axis must have stride 1.
//
// zero_cond_t (Qwen-Image-Edit-2511) gives reference-image tokens their own parameters: a
// ChannelParam may carry a second set, used by tokens s >= split of every sample, while tokens
// s < split use the first set. All parameters of one call must share one dtype (f32 or bf16).
//
// Arithmetic is f32 with one rounding to x's dtype. The diffusers reference rounds after each bf16
// operation, so bf16 results may differ from it by about one bf16 step. In a dry run nothing is
// computed.
#pragma once

#include <cstdint>
#include <utility>

#include "runtime/tensor.h"

namespace ethereal::cpu {

// One per-channel parameter, optionally with a second set for tokens s >= split.
struct ChannelParam {
  Tensor first;   // [D] or [B, D]
  Tensor second;  // undefined, or [D] or [B, D] for tokens s >= split
  std::int64_t split = 0;

  ChannelParam(Tensor only) : first(std::move(only)) {}  // NOLINT: implicit by design
  ChannelParam(Tensor first_set, Tensor second_set, std::int64_t split_token)
      : first(std::move(first_set)), second(std::move(second_set)), split(split_token) {}
};

// x * (1 + scale) + shift. Returns a new contiguous tensor of x's dtype.
Tensor modulate(const Tensor& x, const ChannelParam& scale, const ChannelParam& shift);
void modulate_(Tensor& x, const ChannelParam& scale, const ChannelParam& shift);

// layer_norm(x, eps) * (1 + scale) + shift in one pass over x (no affine LayerNorm over the
// last axis, as in the transformer blocks and the output head).
Tensor layer_norm_modulate(const Tensor& x, const ChannelParam& scale, const ChannelParam& shift,
                           float eps = 1e-6f);

// x += gate * y with y of x's shape (any float dtype).
void add_gated_(Tensor& x, const Tensor& y, const ChannelParam& gate);

}  // namespace ethereal::cpu
