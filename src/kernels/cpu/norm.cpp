#include "kernels/cpu/norm.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "kernels/cpu/kernel_support.h"
#include "kernels/cpu/row_stats.h"
#include "runtime/parallel.h"

namespace ethereal::cpu {

namespace {

using simd::chunk_lanes;
using simd::kLanes;
using simd::load_chunk;
using simd::store_chunk;
using simd::Vec16;
using support::bf16_t;

template <typename T, typename U>
void layer_norm_row(const T* x, U* y, std::int64_t n, float eps) {
  const support::RowMoments moments = support::layer_norm_moments(x, n, eps);
  const Vec16 mean(moments.mean);
  const Vec16 rstd(moments.rstd);
  for (std::int64_t i = 0; i < n; i += kLanes) {
    const int lanes = chunk_lanes(i, n);
    store_chunk(y + i, (load_chunk(x + i, lanes) - mean) * rstd, lanes);
  }
}

// `weight` is null for no weight, otherwise W is its element type.
template <typename T, typename W, typename U>
void rms_norm_row(const T* x, const W* weight, U* y, std::int64_t n, float eps,
                  bool round_normalised) {
  Vec16 squares;
  for (std::int64_t i = 0; i < n; i += kLanes) {
    const Vec16 v = load_chunk(x + i, chunk_lanes(i, n));
    squares = simd::fma(v, v, squares);
  }
  const Vec16 rstd(1.0f / std::sqrt(simd::reduce_add(squares) / static_cast<float>(n) + eps));
  for (std::int64_t i = 0; i < n; i += kLanes) {
    const int lanes = chunk_lanes(i, n);
    Vec16 normalised = load_chunk(x + i, lanes) * rstd;
    if (weight != nullptr) {
      if (round_normalised) {
        normalised = simd::round_to_bf16(normalised);
      }
      normalised *= load_chunk(weight + i, lanes);
    }
    store_chunk(y + i, normalised, lanes);
  }
}

void check_row_input(const char* kernel, const Tensor& x) {
  support::require_float(kernel, "x", x);
  if (x.dim() < 1 || x.size(-1) < 1) {
    throw Error(
        fmt::format("{}: argument 'x' needs a non-empty last axis, got {}", kernel, x.describe()));
  }
  support::require_unit_last_stride(kernel, "x", x);
}

void run_layer_norm(const Tensor& x, const Tensor& y, float eps) {
  const std::int64_t n = x.size(-1);
  support::dispatch_float(x.dtype(), [&](auto element) {
    using T = decltype(element);
    support::for_each_row<T, T>(x, y,
                                [&](const T* in, T* out) { layer_norm_row(in, out, n, eps); });
  });
}

void run_rms_norm(const Tensor& x, const Tensor& weight, const Tensor& y,
                  const RmsNormOptions& options) {
  const std::int64_t n = x.size(-1);
  const bool round_normalised =
      weight.defined() && weight.dtype() == DType::bf16 && options.round_before_weight;
  const DType weight_dtype = weight.defined() ? weight.dtype() : DType::f32;
  support::dispatch_float(x.dtype(), [&](auto element) {
    using T = decltype(element);
    support::dispatch_float(weight_dtype, [&](auto weight_element) {
      using W = decltype(weight_element);
      const W* w = weight.defined() ? weight.data_as<W>() : nullptr;
      support::for_each_row<T, T>(x, y, [&](const T* in, T* out) {
        rms_norm_row(in, w, out, n, options.eps, round_normalised);
      });
    });
  });
}

void check_rms_weight(const char* kernel, const Tensor& x, const Tensor& weight) {
  if (weight.defined()) {
    support::require_vector(kernel, "weight", weight, x.size(-1));
  }
}

}  // namespace

Tensor layer_norm(const Tensor& x, float eps) {
  check_row_input("layer_norm", x);
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  if (!support::skip_compute(x)) {
    run_layer_norm(x, y, eps);
  }
  return y;
}

void layer_norm_(Tensor& x, float eps) {
  check_row_input("layer_norm_", x);
  if (!support::skip_compute(x)) {
    run_layer_norm(x, x, eps);
  }
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, const RmsNormOptions& options) {
  check_row_input("rms_norm", x);
  check_rms_weight("rms_norm", x, weight);
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  if (!support::skip_compute(x, weight)) {
    run_rms_norm(x, weight, y, options);
  }
  return y;
}

void rms_norm_(Tensor& x, const Tensor& weight, const RmsNormOptions& options) {
  check_row_input("rms_norm_", x);
  check_rms_weight("rms_norm_", x, weight);
  if (!support::skip_compute(x, weight)) {
    run_rms_norm(x, weight, x, options);
  }
}

namespace {

// Positions of one work item of channel_rms_norm: a multiple of 16, small enough that the
// C x block slice (384 channels: 192 KiB in bf16) stays in a 1 MiB L2 cache between passes.
constexpr std::int64_t kChannelNormBlock = 256;

template <typename T, typename G>
void channel_rms_norm_block(const T* x, const G* gamma, T* y, std::int64_t channels,
                            std::int64_t plane, std::int64_t count, float eps) {
  constexpr int kVectors = kChannelNormBlock / kLanes;
  Vec16 squares[kVectors];
  for (std::int64_t c = 0; c < channels; ++c) {
    const T* row = x + c * plane;
    for (std::int64_t i = 0; i < count; i += kLanes) {
      const Vec16 v = load_chunk(row + i, chunk_lanes(i, count));
      squares[i / kLanes] = simd::fma(v, v, squares[i / kLanes]);
    }
  }
  // scale = sqrt(C) / max(||x||, eps), per position.
  const float root_channels = std::sqrt(static_cast<float>(channels));
  float scale[kChannelNormBlock];
  for (int k = 0; k < kVectors; ++k) {
    squares[k].store(scale + k * kLanes);
  }
  for (std::int64_t i = 0; i < count; ++i) {
    scale[i] = root_channels / std::max(std::sqrt(scale[i]), eps);
  }
  for (std::int64_t c = 0; c < channels; ++c) {
    const Vec16 g(simd::to_f32(gamma[c]));
    for (std::int64_t i = 0; i < count; i += kLanes) {
      const int lanes = chunk_lanes(i, count);
      const Vec16 v = load_chunk(x + c * plane + i, lanes);
      store_chunk(y + c * plane + i, v * Vec16::load(scale + i) * g, lanes);
    }
  }
}

}  // namespace

Tensor channel_rms_norm(const Tensor& x, const Tensor& gamma, float eps) {
  constexpr const char* kKernel = "channel_rms_norm";
  support::require_float(kKernel, "x", x);
  if (x.dim() < 2) {
    throw Error(fmt::format("{}: argument 'x' must be [N, C, ...] with at least 2 axes, got {}",
                            kKernel, x.describe()));
  }
  support::require_contiguous(kKernel, "x", x);
  support::require_float(kKernel, "gamma", gamma);
  support::require_contiguous(kKernel, "gamma", gamma);
  const std::int64_t batch = x.size(0);
  const std::int64_t channels = x.size(1);
  if (gamma.numel() != channels) {
    throw Error(fmt::format("{}: 'gamma' must hold one value per channel ({}), got {}", kKernel,
                            channels, gamma.describe()));
  }
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  if (support::skip_compute(x, gamma) || y.numel() == 0) {
    return y;
  }
  const std::int64_t plane = x.numel() / (batch * channels);
  const std::int64_t blocks_per_plane = (plane + kChannelNormBlock - 1) / kChannelNormBlock;
  support::dispatch_float(x.dtype(), [&](auto element) {
    using T = decltype(element);
    support::dispatch_float(gamma.dtype(), [&](auto gamma_element) {
      using G = decltype(gamma_element);
      const T* in = x.data_as<T>();
      const G* g = gamma.data_as<G>();
      T* out = y.data_as<T>();
      parallel_for(0, batch * blocks_per_plane, 1, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t item = begin; item < end; ++item) {
          const std::int64_t n = item / blocks_per_plane;
          const std::int64_t start = (item % blocks_per_plane) * kChannelNormBlock;
          const std::int64_t count = std::min(kChannelNormBlock, plane - start);
          const std::int64_t base = n * channels * plane + start;
          channel_rms_norm_block(in + base, g, out + base, channels, plane, count, eps);
        }
      });
    });
  });
  return y;
}

}  // namespace ethereal::cpu
