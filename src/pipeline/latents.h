// Latent tensors of the Edit-Plus pipeline: the seeded initial noise, 2x2 packing into
// transformer tokens and back, and true classifier-free guidance with the per-token norm
// rescale.
#pragma once

#include <cstdint>

#include "runtime/tensor.h"

namespace ethereal {

// Standard normal noise of `shape` in f32, from a documented generator so that other
// implementations can reproduce it: std::mt19937_64 seeded with `seed`; each pair of normals
// comes from two draws u1, u2 = (draw >> 11) * 2^-53 by the Box-Muller transform
// z0 = sqrt(-2 ln(1 - u1)) cos(2 pi u2), z1 = sqrt(-2 ln(1 - u1)) sin(2 pi u2), computed in
// double; values fill the tensor in row-major order (z0 first).
Tensor gaussian_noise(const Shape& shape, std::uint64_t seed);

// [B, C, H, W] -> [B, (H/2)(W/2), 4C]: token (i, j) in row-major order, channel c*4 + dy*2 + dx.
// H and W must be even.
Tensor pack_latents(const Tensor& latents);
// Inverse of pack_latents: [B, (H/2)(W/2), 4C] -> [B, C, H, W].
Tensor unpack_latents(const Tensor& tokens, std::int64_t height, std::int64_t width);

// True CFG: combined = uncond + scale * (cond - uncond), then each token (last axis) is rescaled
// to the L2 norm of the conditional prediction: combined * |cond| / |combined|.
// Inputs are [..., D] with the same shape; the result has cond's dtype; computed in f32.
Tensor guided_velocity(const Tensor& cond, const Tensor& uncond, float scale);

}  // namespace ethereal
