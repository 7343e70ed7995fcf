#include "kernels/cpu/rope.h"

#include <fmt/format.h>

#include "kernels/cpu/kernel_support.h"
#include "runtime/parallel.h"

namespace ethereal::cpu {

namespace {

using simd::chunk_lanes;
using simd::kLanes;
using simd::load_chunk;
using simd::store_chunk;
using simd::Vec16;

constexpr const char* kKernel = "apply_rope";

struct RopeLayout {
  std::int64_t batch = 1;
  std::int64_t tokens = 0;
  std::int64_t heads = 0;
  std::int64_t dim = 0;
  std::int64_t table_batch_stride = 0;  // 0 when all samples share the tables
  std::int64_t table_token_stride = 0;
};

void check_table(const char* name, const Tensor& table, const RopeLayout& layout, RopeStyle style) {
  if (!table.defined() || table.dtype() != DType::f32) {
    throw Error(fmt::format("{}: table '{}' must be f32, got {}", kKernel, name, table.describe()));
  }
  const std::int64_t half = layout.dim / 2;
  const std::int64_t width = table.dim() >= 2 ? table.size(-1) : -1;
  const bool width_ok = width == half || (style == RopeStyle::rotate_half && width == layout.dim);
  const bool rank_ok = table.dim() == 2 || (table.dim() == 3 && table.size(0) == layout.batch);
  if (!rank_ok || !width_ok || table.size(-2) != layout.tokens) {
    throw Error(
        fmt::format("{}: table '{}' must be [{}, {}] or [{}, {}, {}] for x with {} tokens "
                    "and head dim {}, got {}",
                    kKernel, name, layout.tokens, half, layout.batch, layout.tokens, half,
                    layout.tokens, layout.dim, table.describe()));
  }
  support::require_unit_last_stride(kKernel, name, table);
}

RopeLayout check_arguments(const Tensor& x, const Tensor& cos, const Tensor& sin, RopeStyle style) {
  support::require_float(kKernel, "x", x);
  if (x.dim() != 3 && x.dim() != 4) {
    throw Error(fmt::format("{}: argument 'x' must be [S, H, D] or [B, S, H, D], got {}", kKernel,
                            x.describe()));
  }
  support::require_unit_last_stride(kKernel, "x", x);
  RopeLayout layout;
  layout.batch = x.dim() == 4 ? x.size(0) : 1;
  layout.tokens = x.size(-3);
  layout.heads = x.size(-2);
  layout.dim = x.size(-1);
  if (layout.dim % 2 != 0) {
    throw Error(
        fmt::format("{}: head dim {} of {} must be even", kKernel, layout.dim, x.describe()));
  }
  check_table("cos", cos, layout, style);
  check_table("sin", sin, layout, style);
  if (cos.shape() != sin.shape() || cos.strides() != sin.strides()) {
    throw Error(fmt::format("{}: tables 'cos' {} and 'sin' {} must have the same shape and strides",
                            kKernel, cos.describe(), sin.describe()));
  }
  layout.table_token_stride = cos.stride(-2);
  layout.table_batch_stride = cos.dim() == 3 ? cos.stride(0) : 0;
  return layout;
}

// (x[2k], x[2k+1]) -> (x[2k] c - x[2k+1] s, x[2k] s + x[2k+1] c), 8 pairs per vector.
template <typename T>
void rotate_interleaved(const T* x, T* y, const float* cos, const float* sin, std::int64_t dim) {
  static constexpr float kSigns[kLanes] = {-1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1};
  const Vec16 sign = Vec16::load(kSigns);
  for (std::int64_t i = 0; i < dim; i += kLanes) {
    const int lanes = chunk_lanes(i, dim);
    const Vec16 v = load_chunk(x + i, lanes);
    const Vec16 c = simd::load_duplicated(cos + i / 2, lanes / 2);
    const Vec16 s = simd::load_duplicated(sin + i / 2, lanes / 2) * sign;
    store_chunk(y + i, simd::fma(v, c, simd::swap_pairs(v) * s), lanes);
  }
}

// (x[k], x[k + D/2]) -> (x[k] c - x[k + D/2] s, x[k + D/2] c + x[k] s).
template <typename T>
void rotate_half(const T* x, T* y, const float* cos, const float* sin, std::int64_t dim) {
  const std::int64_t half = dim / 2;
  for (std::int64_t i = 0; i < half; i += kLanes) {
    const int lanes = chunk_lanes(i, half);
    const Vec16 a = load_chunk(x + i, lanes);
    const Vec16 b = load_chunk(x + half + i, lanes);
    const Vec16 c = load_chunk(cos + i, lanes);
    const Vec16 s = load_chunk(sin + i, lanes);
    store_chunk(y + i, a * c - b * s, lanes);
    store_chunk(y + half + i, simd::fma(b, c, a * s), lanes);
  }
}

void run_rope(const Tensor& x, const Tensor& y, const Tensor& cos, const Tensor& sin,
              const RopeLayout& layout, RopeStyle style) {
  const float* cos_base = cos.data_as<float>();
  const float* sin_base = sin.data_as<float>();
  const std::int64_t rows_per_sample = layout.tokens * layout.heads;
  support::dispatch_float(x.dtype(), [&](auto element) {
    using T = decltype(element);
    const support::RowIndexer x_rows(x);
    const support::RowIndexer y_rows(y);
    const T* in = x.data_as<T>();
    T* out = y.data_as<T>();
    parallel_for(0, x_rows.rows(), support::row_grain(layout.dim),
                 [&](std::int64_t begin, std::int64_t end) {
                   for (std::int64_t row = begin; row < end; ++row) {
                     const std::int64_t sample = row / rows_per_sample;
                     const std::int64_t token = (row % rows_per_sample) / layout.heads;
                     const std::int64_t table =
                         sample * layout.table_batch_stride + token * layout.table_token_stride;
                     const T* source = in + x_rows.offset(row);
                     T* destination = out + y_rows.offset(row);
                     if (style == RopeStyle::interleaved) {
                       rotate_interleaved(source, destination, cos_base + table, sin_base + table,
                                          layout.dim);
                     } else {
                       rotate_half(source, destination, cos_base + table, sin_base + table,
                                   layout.dim);
                     }
                   }
                 });
  });
}

}  // namespace

void apply_rope_(Tensor& x, const Tensor& cos, const Tensor& sin, RopeStyle style) {
  const RopeLayout layout = check_arguments(x, cos, sin, style);
  if (!support::skip_compute(x, cos, sin) && x.numel() > 0) {
    run_rope(x, x, cos, sin, layout, style);
  }
}

Tensor apply_rope(const Tensor& x, const Tensor& cos, const Tensor& sin, RopeStyle style) {
  const RopeLayout layout = check_arguments(x, cos, sin, style);
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  if (!support::skip_compute(x, cos, sin) && x.numel() > 0) {
    run_rope(x, y, cos, sin, layout, style);
  }
  return y;
}

}  // namespace ethereal::cpu
