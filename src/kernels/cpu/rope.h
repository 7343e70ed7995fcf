// Rotary position embeddings applied to queries or keys.
//
// x is [S, H, D] or [B, S, H, D] (f32 or bf16, stride 1 on the last axis, other axes may be
// strided, so q and k can be rotated inside a fused projection output). The angle tables are
// f32 cos and sin of shape [S, D/2], or [B, S, D/2] when positions differ per sample. Entry
// (s, k) is cos or sin of the k-th rotation angle of token s. Rotation is computed in f32 and
// rounded once to x's dtype.
//
// Two pairings of the D channels into D/2 rotated planes:
//   interleaved  (x[2k], x[2k+1]) is multiplied as a complex number by e^(i theta_k): the
//                diffusion transformer (GPT-J / Flux style).
//   rotate_half  (x[k], x[k + D/2]) rotated by theta_k: out = x cos + rotate_half(x) sin, the
//                Qwen2.5-VL convention. Tables built as cat(freqs, freqs) of width D are also
//                accepted, and only their first D/2 columns are read, since both halves are equal.
#pragma once

#include "runtime/tensor.h"

namespace ethereal::cpu {

enum class RopeStyle {
  interleaved,
  rotate_half,
};

// Rotates x in place. In a dry run nothing is computed.
void apply_rope_(Tensor& x, const Tensor& cos, const Tensor& sin, RopeStyle style);
// Returns a rotated contiguous copy of x.
Tensor apply_rope(const Tensor& x, const Tensor& cos, const Tensor& sin, RopeStyle style);

}  // namespace ethereal::cpu
