#include "kernels/cpu/modulation.h"

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

// x viewed as [batch, tokens, channels].
struct TokenLayout {
  std::int64_t batch = 1;
  std::int64_t tokens = 0;
  std::int64_t channels = 0;
};

TokenLayout token_layout(const char* kernel, const Tensor& x) {
  support::require_float(kernel, "x", x);
  if (x.dim() != 2 && x.dim() != 3) {
    throw Error(
        fmt::format("{}: argument 'x' must be [S, D] or [B, S, D], got {}", kernel, x.describe()));
  }
  support::require_unit_last_stride(kernel, "x", x);
  TokenLayout layout;
  layout.batch = x.dim() == 3 ? x.size(0) : 1;
  layout.tokens = x.size(-2);
  layout.channels = x.size(-1);
  return layout;
}

// A ChannelParam resolved to base pointers and per-sample row strides (0 when shared).
template <typename P>
struct ParamRows {
  const P* first = nullptr;
  std::int64_t first_stride = 0;
  const P* second = nullptr;
  std::int64_t second_stride = 0;
  std::int64_t split = 0;

  const P* row(std::int64_t sample, std::int64_t token) const {
    return token < split ? first + sample * first_stride : second + sample * second_stride;
  }
};

// Throws unless `t` is [D], [1, D] or [batch, D] with stride 1 along D.
void check_param_set(const char* kernel, const char* argument, const Tensor& t,
                     const TokenLayout& layout) {
  support::require_float(kernel, argument, t);
  const bool vector = t.dim() == 1 && t.size(0) == layout.channels;
  const bool matrix =
      t.dim() == 2 && t.size(1) == layout.channels && (t.size(0) == 1 || t.size(0) == layout.batch);
  if (!vector && !matrix) {
    throw Error(fmt::format("{}: argument '{}' must be [{}] or [{}, {}] to match x, got {}", kernel,
                            argument, layout.channels, layout.batch, layout.channels,
                            t.describe()));
  }
  support::require_unit_last_stride(kernel, argument, t);
}

void check_param(const char* kernel, const char* argument, const ChannelParam& param,
                 const TokenLayout& layout, DType dtype) {
  check_param_set(kernel, argument, param.first, layout);
  if (param.first.dtype() != dtype) {
    throw Error(
        fmt::format("{}: argument '{}' is {} but the other parameters are {}; pass all "
                    "modulation parameters in one dtype",
                    kernel, argument, param.first.describe(), dtype_name(dtype)));
  }
  if (param.second.defined()) {
    check_param_set(kernel, argument, param.second, layout);
    if (param.second.dtype() != dtype) {
      throw Error(fmt::format("{}: the second set of '{}' is {} but the first is {}", kernel,
                              argument, param.second.describe(), dtype_name(dtype)));
    }
    if (param.split < 0 || param.split > layout.tokens) {
      throw Error(fmt::format("{}: split {} of '{}' is outside the {} tokens of x", kernel,
                              param.split, argument, layout.tokens));
    }
  }
}

template <typename P>
ParamRows<P> resolve(const ChannelParam& param, const TokenLayout& layout) {
  ParamRows<P> rows;
  rows.first = param.first.data_as<P>();
  rows.first_stride = param.first.dim() == 2 && param.first.size(0) > 1 ? param.first.stride(0) : 0;
  rows.split = layout.tokens;
  if (param.second.defined()) {
    rows.second = param.second.data_as<P>();
    rows.second_stride =
        param.second.dim() == 2 && param.second.size(0) > 1 ? param.second.stride(0) : 0;
    rows.split = param.split;
  }
  return rows;
}

// Runs fn(x_row, out_row, sample, token) over all rows of x with T = x's element type and P the
// parameters' element type.
template <typename Fn>
void for_each_token(const Tensor& x, const Tensor& out, const TokenLayout& layout,
                    DType param_dtype, Fn&& fn) {
  const support::RowIndexer x_rows(x);
  const support::RowIndexer out_rows(out);
  support::dispatch_float(x.dtype(), [&](auto x_element) {
    using T = decltype(x_element);
    support::dispatch_float(param_dtype, [&](auto param_element) {
      using P = decltype(param_element);
      const T* in = x.data_as<T>();
      T* result = out.data_as<T>();
      parallel_for(0, x_rows.rows(), support::row_grain(layout.channels),
                   [&](std::int64_t begin, std::int64_t end) {
                     for (std::int64_t row = begin; row < end; ++row) {
                       fn(in + x_rows.offset(row), result + out_rows.offset(row),
                          row / layout.tokens, row % layout.tokens, P{});
                     }
                   });
    });
  });
}

template <typename T, typename P>
void modulate_row(const T* x, T* y, const P* scale, const P* shift, std::int64_t n, float mean,
                  float rstd) {
  const Vec16 mean_v(mean);
  const Vec16 rstd_v(rstd);
  const Vec16 one(1.0f);
  for (std::int64_t i = 0; i < n; i += kLanes) {
    const int lanes = chunk_lanes(i, n);
    const Vec16 normalised = (load_chunk(x + i, lanes) - mean_v) * rstd_v;
    const Vec16 factor = one + load_chunk(scale + i, lanes);
    store_chunk(y + i, simd::fma(normalised, factor, load_chunk(shift + i, lanes)), lanes);
  }
}

// Shared body of modulate and layer_norm_modulate.
void run_modulate(const char* kernel, const Tensor& x, const Tensor& out, const ChannelParam& scale,
                  const ChannelParam& shift, bool normalise, float eps) {
  const TokenLayout layout = token_layout(kernel, x);
  const DType dtype = scale.first.defined() ? scale.first.dtype() : DType::f32;
  check_param(kernel, "scale", scale, layout, dtype);
  check_param(kernel, "shift", shift, layout, dtype);
  if (support::skip_compute(x, scale.first, shift.first, scale.second, shift.second) ||
      x.numel() == 0) {
    return;
  }
  for_each_token(x, out, layout, dtype,
                 [&](const auto* in, auto* result, std::int64_t sample, std::int64_t token,
                     auto param_element) {
                   using P = decltype(param_element);
                   const std::int64_t n = layout.channels;
                   support::RowMoments moments{0.0f, 1.0f};
                   if (normalise) {
                     moments = support::layer_norm_moments(in, n, eps);
                   }
                   modulate_row(in, result, resolve<P>(scale, layout).row(sample, token),
                                resolve<P>(shift, layout).row(sample, token), n, moments.mean,
                                moments.rstd);
                 });
}

}  // namespace

Tensor modulate(const Tensor& x, const ChannelParam& scale, const ChannelParam& shift) {
  token_layout("modulate", x);
  Tensor out = Tensor::empty(x.shape(), x.dtype());
  run_modulate("modulate", x, out, scale, shift, false, 0.0f);
  return out;
}

void modulate_(Tensor& x, const ChannelParam& scale, const ChannelParam& shift) {
  run_modulate("modulate_", x, x, scale, shift, false, 0.0f);
}

Tensor layer_norm_modulate(const Tensor& x, const ChannelParam& scale, const ChannelParam& shift,
                           float eps) {
  token_layout("layer_norm_modulate", x);
  Tensor out = Tensor::empty(x.shape(), x.dtype());
  run_modulate("layer_norm_modulate", x, out, scale, shift, true, eps);
  return out;
}

void add_gated_(Tensor& x, const Tensor& y, const ChannelParam& gate) {
  constexpr const char* kKernel = "add_gated_";
  const TokenLayout layout = token_layout(kKernel, x);
  support::require_float(kKernel, "y", y);
  support::require_same_shape(kKernel, "x", x, "y", y);
  support::require_unit_last_stride(kKernel, "y", y);
  const DType dtype = gate.first.defined() ? gate.first.dtype() : DType::f32;
  check_param(kKernel, "gate", gate, layout, dtype);
  if (support::skip_compute(x, y, gate.first, gate.second) || x.numel() == 0) {
    return;
  }
  const support::RowIndexer y_rows(y);
  support::dispatch_float(y.dtype(), [&](auto y_element) {
    using Y = decltype(y_element);
    const Y* y_base = y.data_as<Y>();
    for_each_token(x, x, layout, dtype,
                   [&](const auto* in, auto* result, std::int64_t sample, std::int64_t token,
                       auto param_element) {
                     using P = decltype(param_element);
                     const P* g = resolve<P>(gate, layout).row(sample, token);
                     const Y* y_row = y_base + y_rows.offset(sample * layout.tokens + token);
                     const std::int64_t n = layout.channels;
                     for (std::int64_t i = 0; i < n; i += kLanes) {
                       const int lanes = chunk_lanes(i, n);
                       const Vec16 sum =
                           simd::fma(load_chunk(g + i, lanes), load_chunk(y_row + i, lanes),
                                     load_chunk(in + i, lanes));
                       store_chunk(result + i, sum, lanes);
                     }
                   });
  });
}

}  // namespace ethereal::cpu
