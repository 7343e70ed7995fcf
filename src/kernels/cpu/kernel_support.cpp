#include "kernels/cpu/kernel_support.h"

#include <algorithm>

#include <fmt/format.h>

namespace ethereal::cpu::support {

void require_float(const char* kernel, const char* argument, const Tensor& t) {
  if (!t.defined()) {
    throw Error(fmt::format("{}: argument '{}' is undefined; pass an f32 or bf16 tensor", kernel,
                            argument));
  }
  if (t.dtype() != DType::f32 && t.dtype() != DType::bf16) {
    throw Error(fmt::format("{}: argument '{}' must be f32 or bf16, got {}", kernel, argument,
                            t.describe()));
  }
}

void require_rank(const char* kernel, const char* argument, const Tensor& t, std::int64_t rank) {
  if (t.dim() != rank) {
    throw Error(fmt::format("{}: argument '{}' must have {} axes, got {}", kernel, argument, rank,
                            t.describe()));
  }
}

void require_unit_last_stride(const char* kernel, const char* argument, const Tensor& t) {
  if (t.dim() > 0 && t.size(-1) > 1 && t.stride(-1) != 1) {
    throw Error(fmt::format(
        "{}: argument '{}' ({}) must have stride 1 on its last axis, got stride {}; pass "
        ".contiguous()",
        kernel, argument, t.describe(), t.stride(-1)));
  }
}

void require_contiguous(const char* kernel, const char* argument, const Tensor& t) {
  if (!t.is_contiguous()) {
    throw Error(
        fmt::format("{}: argument '{}' ({}) with strides {} must be contiguous; pass "
                    ".contiguous()",
                    kernel, argument, t.describe(), shape_str(t.strides())));
  }
}

void require_same_shape(const char* kernel, const char* first_name, const Tensor& first,
                        const char* second_name, const Tensor& second) {
  if (first.shape() != second.shape()) {
    throw Error(fmt::format("{}: '{}' has shape {} but '{}' has shape {}; they must match", kernel,
                            first_name, shape_str(first.shape()), second_name,
                            shape_str(second.shape())));
  }
}

void require_vector(const char* kernel, const char* argument, const Tensor& vector,
                    std::int64_t length) {
  require_float(kernel, argument, vector);
  if (vector.dim() != 1 || vector.size(0) != length) {
    throw Error(fmt::format("{}: argument '{}' must have shape [{}], got {}", kernel, argument,
                            length, vector.describe()));
  }
  require_contiguous(kernel, argument, vector);
}

RowIndexer::RowIndexer(const Tensor& t) {
  if (t.dim() == 0) {
    return;
  }
  cols_ = t.size(-1);
  // Merge adjacent leading axes whose strides nest, so the common cases (contiguous rows,
  // a column slice of a wider matrix) reduce to a single stride.
  for (std::int64_t axis = 0; axis + 1 < t.dim(); ++axis) {
    const std::int64_t extent = t.size(axis);
    rows_ *= extent;
    if (extent == 1) {
      continue;
    }
    if (!extents_.empty() && strides_.back() == extent * t.stride(axis)) {
      extents_.back() *= extent;
      strides_.back() = t.stride(axis);
    } else {
      extents_.push_back(extent);
      strides_.push_back(t.stride(axis));
    }
  }
}

std::int64_t RowIndexer::offset(std::int64_t row) const {
  if (extents_.size() == 1) {
    return row * strides_[0];
  }
  std::int64_t result = 0;
  for (std::size_t axis = extents_.size(); axis-- > 0;) {
    result += (row % extents_[axis]) * strides_[axis];
    row /= extents_[axis];
  }
  return result;
}

std::int64_t row_grain(std::int64_t cols) {
  constexpr std::int64_t kElementsPerChunk = 16 * 1024;
  return std::max<std::int64_t>(1, kElementsPerChunk / std::max<std::int64_t>(cols, 1));
}

}  // namespace ethereal::cpu::support
