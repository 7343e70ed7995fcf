#include "kernels/cpu/resize.h"

#include <cstring>

#include <fmt/format.h>

#include "kernels/cpu/kernel_support.h"
#include "runtime/parallel.h"

namespace ethereal::cpu {

namespace {

// Writes each element of one input row twice into one output row. E is an unsigned integer
// type of the element's size, so the copy is exact for every dtype.
template <typename E>
void duplicate_row(const E* in, std::int64_t in_stride, E* out, std::int64_t width) {
  for (std::int64_t j = 0; j < width; ++j) {
    const E value = in[j * in_stride];
    out[2 * j] = value;
    out[2 * j + 1] = value;
  }
}

template <typename E>
void upsample_rows(const Tensor& x, const Tensor& y) {
  const std::int64_t height = x.size(-2);
  const std::int64_t width = x.size(-1);
  const std::int64_t row_stride = x.stride(-2);
  const std::int64_t column_stride = x.stride(-1);
  // Leading axes merged into planes, each of height x width.
  const Tensor planes = x.select(-1, 0).select(-1, 0);
  const std::int64_t plane_count = planes.numel();
  const E* in = static_cast<const E*>(x.data());
  E* out = static_cast<E*>(y.data());
  const support::RowIndexer plane_index(planes.unsqueeze(-1));
  parallel_for(0, plane_count * height, support::row_grain(4 * width),
               [&](std::int64_t begin, std::int64_t end) {
                 for (std::int64_t item = begin; item < end; ++item) {
                   const std::int64_t plane = item / height;
                   const std::int64_t i = item % height;
                   const E* source = in + plane_index.offset(plane) + i * row_stride;
                   E* first = out + (plane * 2 * height + 2 * i) * 2 * width;
                   duplicate_row(source, column_stride, first, width);
                   std::memcpy(first + 2 * width, first, sizeof(E) * 2 * width);
                 }
               });
}

}  // namespace

Tensor upsample_nearest2x(const Tensor& x) {
  if (!x.defined() || x.dim() < 2) {
    throw Error(fmt::format("upsample_nearest2x: argument 'x' must have at least 2 axes, got {}",
                            x.describe()));
  }
  Shape shape = x.shape();
  shape[shape.size() - 2] *= 2;
  shape[shape.size() - 1] *= 2;
  Tensor y = Tensor::empty(shape, x.dtype());
  if (support::skip_compute(x) || y.numel() == 0) {
    return y;
  }
  switch (dtype_bits(x.dtype())) {
    case 8: upsample_rows<std::uint8_t>(x, y); break;
    case 16: upsample_rows<std::uint16_t>(x, y); break;
    case 32: upsample_rows<std::uint32_t>(x, y); break;
    case 64: upsample_rows<std::uint64_t>(x, y); break;
    default:
      throw Error(fmt::format("upsample_nearest2x: {} has sub-byte elements; unpack it first",
                              x.describe()));
  }
  return y;
}

}  // namespace ethereal::cpu
