// A LoRA update applied at run time, next to an unchanged (possibly quantised) linear layer.
//
// For a layer y = x W^T + b the adapter adds scale * (x down^T) up^T, which equals
// x (scale * up down)^T without forming the [out, in] product. Cost per row of x:
// rank * (in_features + out_features) multiply-adds, about 4% of the layer for rank 64 on
// 3072 x 3072.
#pragma once

#include <cstddef>
#include <cstdint>

#include "runtime/tensor.h"

namespace ethereal {

class LowRankAdapter {
 public:
  // Rows of x handled per pair of matrix products in add_to(). The temporaries of one chunk are
  // [kRowsPerChunk, rank] and [kRowsPerChunk, out_features] in the factor dtype, so for 12288
  // output features and bf16 factors they stay under 25 MiB however many rows x has.
  static constexpr std::int64_t kRowsPerChunk = 1024;

  LowRankAdapter() = default;
  // down [rank, in_features], up [out_features, rank], f32 or bf16, any strides. The factors
  // keep the dtype given, and non-contiguous ones are copied to contiguous tensors from the
  // current allocator. When the two dtypes differ, both are converted to f32. add_to() computes
  // in the factor dtype, so bf16 factors give the fast path for bf16 activations.
  // scale = strength * alpha / rank, already combined. Throws InvalidInputError when the factors
  // are not 2-D floats of matching rank, or the scale is not finite.
  LowRankAdapter(Tensor down, Tensor up, float scale);

  bool empty() const { return !down_.defined(); }
  std::int64_t rank() const { return empty() ? 0 : down_.size(0); }
  std::int64_t in_features() const { return empty() ? 0 : down_.size(1); }
  std::int64_t out_features() const { return empty() ? 0 : up_.size(0); }
  // The dtype add_to() computes in (f32 for an empty adapter).
  DType factor_dtype() const { return empty() ? DType::f32 : down_.dtype(); }
  const Tensor& down() const { return down_; }
  const Tensor& up() const { return up_; }
  float scale() const { return scale_; }

  // out += scale * (x down^T) up^T. x [..., in_features] f32 or bf16, any strides;
  // out [..., out_features] contiguous f32 or bf16 with the same leading extents as x. x is
  // converted to the factor dtype (one copy of x, made only when its dtype differs or it is not
  // contiguous). Rows go through in chunks of kRowsPerChunk, and each chunk's product is rounded
  // to the factor dtype before it is added to out with f32 arithmetic. In a dry run, or when x
  // or out is dry, the same temporaries are allocated and nothing is computed. An empty adapter
  // does nothing.
  void add_to(const Tensor& x, const Tensor& out) const;

  // Adds another adapter of the same layer (several LoRA files) by concatenating the ranks:
  // down becomes [rank + other.rank, in], up [out, rank + other.rank]. With equal scales the
  // factors are concatenated as they are. Otherwise each up factor is multiplied by its own
  // scale (one rounding in the factor dtype) and the combined scale is 1. The other adapter's
  // factors are converted to this adapter's dtype. Throws InvalidInputError when in_features or
  // out_features differ.
  void append(const LowRankAdapter& other);

  // Bytes of the two factors.
  std::size_t nbytes() const;

 private:
  Tensor down_;  // [rank, in_features], contiguous
  Tensor up_;    // [out_features, rank], contiguous, same dtype as down_
  float scale_ = 0.0f;
};

}  // namespace ethereal
