// Normalisation kernels: layer norm and RMS norm over the last axis, and the channel-axis
// L2 normalisation of the Wan VAE.
//
// Inputs are f32 or bf16 with stride 1 on the last axis (leading axes may be strided views).
// Statistics and arithmetic are f32, and bf16 results are rounded to nearest even once at the end,
// except where RmsNormOptions::round_before_weight selects the reference rounding.
// Out-of-place forms return a new contiguous tensor of the input's dtype. In a dry run they
// only allocate that output.
#pragma once

#include "runtime/tensor.h"

namespace ethereal::cpu {

// y = (x - mean) / sqrt(var + eps) over the last axis, var the biased variance (no affine
// parameters, as the diffusion transformer's norms use).
Tensor layer_norm(const Tensor& x, float eps = 1e-6f);
void layer_norm_(Tensor& x, float eps = 1e-6f);

struct RmsNormOptions {
  float eps = 1e-6f;
  // With a bf16 weight, round x * rsqrt(mean(x^2) + eps) to bf16 before multiplying by the
  // weight, as diffusers' RMSNorm does (transformers' Qwen2RMSNorm rounds to the input dtype,
  // which is the same for bf16 activations). When false there is one rounding, at the end.
  bool round_before_weight = true;
};

// y = x * rsqrt(mean(x^2) + eps) * weight over the last axis. `weight` is [D] (f32 or bf16)
// or an undefined tensor for no weight. For the per-head norm of q/k, pass x as
// [..., heads, head_dim] and a [head_dim] weight: the op is the same over the last axis.
Tensor rms_norm(const Tensor& x, const Tensor& weight, const RmsNormOptions& options = {});
void rms_norm_(Tensor& x, const Tensor& weight, const RmsNormOptions& options = {});

// The Wan VAE's RMS_norm for channel-first tensors x [N, C, *spatial]:
// y = x / max(||x||_2, eps) * sqrt(C) * gamma[c], the L2 norm taken over axis 1 (channels) at
// every (n, spatial) position. `gamma` has C elements in any shape ([C], [C, 1, 1], ...).
// `x` must be contiguous. Computed in f32 with one final rounding (PyTorch rounds the
// normalised value and each product to the input dtype in turn).
Tensor channel_rms_norm(const Tensor& x, const Tensor& gamma, float eps = 1e-12f);

}  // namespace ethereal::cpu
