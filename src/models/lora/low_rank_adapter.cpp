#include "models/lora/low_rank_adapter.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include <fmt/format.h>

#include "kernels/cpu/concat.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"
#include "runtime/allocator.h"
#include "runtime/error.h"

namespace ethereal {

namespace {

bool is_float_matrix(const Tensor& t) {
  return t.defined() && t.dim() == 2 && (t.dtype() == DType::f32 || t.dtype() == DType::bf16);
}

// `t` as a contiguous tensor of `dtype`, copied only when needed.
Tensor contiguous_as(const Tensor& t, DType dtype) {
  if (t.dtype() == dtype) {
    return t.contiguous();
  }
  return t.to(dtype);
}

}  // namespace

LowRankAdapter::LowRankAdapter(Tensor down, Tensor up, float scale) : scale_(scale) {
  if (!is_float_matrix(down) || !is_float_matrix(up)) {
    throw InvalidInputError(
        fmt::format("low-rank adapter: down {} and up {} must be 2-D f32 or bf16 tensors",
                    down.defined() ? down.describe() : "undefined",
                    up.defined() ? up.describe() : "undefined"));
  }
  if (down.size(0) != up.size(1)) {
    throw InvalidInputError(
        fmt::format("low-rank adapter: down {} has rank {} but up {} has rank {}", down.describe(),
                    down.size(0), up.describe(), up.size(1)));
  }
  if (!std::isfinite(scale)) {
    throw InvalidInputError(fmt::format("low-rank adapter: scale {} is not finite", scale));
  }
  const DType dtype = down.dtype() == up.dtype() ? down.dtype() : DType::f32;
  down_ = contiguous_as(down, dtype);
  up_ = contiguous_as(up, dtype);
}

void LowRankAdapter::add_to(const Tensor& x, const Tensor& out) const {
  if (empty()) {
    return;
  }
  if (!x.defined() || x.dim() < 1 || x.size(-1) != in_features() ||
      (x.dtype() != DType::f32 && x.dtype() != DType::bf16)) {
    throw Error(fmt::format("LowRankAdapter::add_to: x {} must be f32 or bf16 [..., {}]",
                            x.defined() ? x.describe() : "undefined", in_features()));
  }
  if (!out.defined() || out.dim() != x.dim() || out.size(-1) != out_features() ||
      !std::equal(x.shape().begin(), x.shape().end() - 1, out.shape().begin()) ||
      !out.is_contiguous() || (out.dtype() != DType::f32 && out.dtype() != DType::bf16)) {
    throw Error(fmt::format(
        "LowRankAdapter::add_to: out {} must be a contiguous f32 or bf16 tensor with the leading "
        "extents of x {} and {} features",
        out.defined() ? out.describe() : "undefined", x.describe(), out_features()));
  }
  const std::int64_t rows = x.numel() / std::max<std::int64_t>(in_features(), 1);
  if (rows == 0 || in_features() == 0 || out_features() == 0 || rank() == 0) {
    return;
  }

  // One copy of x when its dtype or layout does not suit the matrix products.
  Tensor x_rows;
  if (x.dtype() == factor_dtype() && x.is_contiguous()) {
    x_rows = x.view({rows, in_features()});
  } else {
    x_rows = Tensor::empty(x.shape(), factor_dtype());
    x_rows.copy_from(x);
    x_rows = x_rows.view({rows, in_features()});
  }
  const Tensor out_rows = out.view({rows, out_features()});

  // A dry run, or a dry x, out or factor, allocates the same temporaries and adds nothing.
  const bool compute =
      !dry_run_active() && !x.is_dry() && !out.is_dry() && !down_.is_dry() && !up_.is_dry();
  for (std::int64_t first = 0; first < rows; first += kRowsPerChunk) {
    const std::int64_t count = std::min(kRowsPerChunk, rows - first);
    const Tensor hidden = cpu::matmul(x_rows.narrow(0, first, count), down_, true);
    const Tensor update = cpu::matmul(hidden, up_, true);
    if (compute) {
      Tensor target = out_rows.narrow(0, first, count);
      cpu::add_scaled_(target, update, scale_);
    }
  }
}

void LowRankAdapter::append(const LowRankAdapter& other) {
  if (other.empty()) {
    return;
  }
  if (empty()) {
    *this = other;
    return;
  }
  if (other.in_features() != in_features() || other.out_features() != out_features()) {
    throw InvalidInputError(
        fmt::format("low-rank adapters of one layer disagree on its shape: [{}, {}] and [{}, {}] "
                    "(out_features, in_features); the LoRA files were made for different models",
                    out_features(), in_features(), other.out_features(), other.in_features()));
  }
  const DType dtype = factor_dtype();
  const Tensor other_down = contiguous_as(other.down_, dtype);
  Tensor other_up = contiguous_as(other.up_, dtype);
  Tensor up = up_;
  float combined_scale = scale_;
  if (other.scale_ != scale_) {
    // Fold each scale into its own up factor, so one scale of 1 serves both.
    up = cpu::scale(up_, scale_);
    other_up = cpu::scale(other_up, other.scale_);
    combined_scale = 1.0f;
  }
  down_ = cpu::concat({down_, other_down}, 0);
  up_ = cpu::concat({up, other_up}, 1);
  scale_ = combined_scale;
}

std::size_t LowRankAdapter::nbytes() const {
  return empty() ? 0 : down_.nbytes() + up_.nbytes();
}

}  // namespace ethereal
