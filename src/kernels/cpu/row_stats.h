// Row statistics shared by the normalisation kernels.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/cpu/simd.h"

namespace ethereal::cpu::support {

struct RowMoments {
  float mean = 0.0f;
  float rstd = 0.0f;  // 1 / sqrt(biased variance + eps)
};

// Mean and reciprocal standard deviation of x[0, n) in f32. Two passes (mean, then squared
// deviations) so that a large mean does not cancel the variance.
template <typename T>
RowMoments layer_norm_moments(const T* x, std::int64_t n, float eps) {
  using simd::chunk_lanes;
  using simd::kLanes;
  using simd::load_chunk;
  using simd::Vec16;
  Vec16 sum;
  for (std::int64_t i = 0; i < n; i += kLanes) {
    sum += load_chunk(x + i, chunk_lanes(i, n));
  }
  RowMoments moments;
  moments.mean = simd::reduce_add(sum) / static_cast<float>(n);
  const Vec16 mean(moments.mean);
  Vec16 squares;
  for (std::int64_t i = 0; i < n; i += kLanes) {
    const int lanes = chunk_lanes(i, n);
    const Vec16 d = simd::first_lanes(load_chunk(x + i, lanes) - mean, lanes);
    squares = simd::fma(d, d, squares);
  }
  const float variance = simd::reduce_add(squares) / static_cast<float>(n);
  moments.rstd = 1.0f / std::sqrt(variance + eps);
  return moments;
}

}  // namespace ethereal::cpu::support
