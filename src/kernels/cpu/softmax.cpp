#include "kernels/cpu/softmax.h"

#include <limits>
#include <type_traits>

#include "kernels/cpu/kernel_support.h"

namespace ethereal::cpu {

namespace {

using simd::chunk_lanes;
using simd::kLanes;
using simd::load_chunk;
using simd::store_chunk;
using simd::Vec16;

template <typename T, typename U>
void softmax_row(const T* x, U* y, std::int64_t n) {
  Vec16 best(-std::numeric_limits<float>::infinity());
  for (std::int64_t i = 0; i < n; i += kLanes) {
    const int lanes = chunk_lanes(i, n);
    // Lanes past the end load as 0, so a max with the first element keeps them neutral.
    best = simd::max(best, lanes == kLanes
                               ? Vec16::load(x + i)
                               : simd::max(Vec16::load(x + i, lanes), Vec16(simd::to_f32(x[0]))));
  }
  const Vec16 max_v(simd::reduce_max(best));
  Vec16 sum;
  for (std::int64_t i = 0; i < n; i += kLanes) {
    const int lanes = chunk_lanes(i, n);
    const Vec16 e = simd::first_lanes(simd::exp(load_chunk(x + i, lanes) - max_v), lanes);
    sum += e;
    if constexpr (std::is_same_v<U, float>) {
      store_chunk(y + i, e, lanes);
    }
  }
  const Vec16 inverse(1.0f / simd::reduce_add(sum));
  for (std::int64_t i = 0; i < n; i += kLanes) {
    const int lanes = chunk_lanes(i, n);
    // A bf16 output recomputes exp rather than reading back a rounded value.
    Vec16 e;
    if constexpr (std::is_same_v<U, float>) {
      e = Vec16::load(y + i, lanes);
    } else {
      e = simd::exp(load_chunk(x + i, lanes) - max_v);
    }
    store_chunk(y + i, e * inverse, lanes);
  }
}

void run_softmax(const Tensor& x, const Tensor& y) {
  const std::int64_t n = support::RowIndexer(x).cols();  // 1 for a 0-d tensor
  support::dispatch_float(x.dtype(), [&](auto element) {
    using T = decltype(element);
    support::for_each_row<T, T>(x, y, [&](const T* in, T* out) { softmax_row(in, out, n); });
  });
}

void check_input(const char* kernel, const Tensor& x) {
  support::require_float(kernel, "x", x);
  support::require_unit_last_stride(kernel, "x", x);
}

}  // namespace

Tensor softmax(const Tensor& x) {
  check_input("softmax", x);
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  if (!support::skip_compute(x) && x.numel() > 0) {
    run_softmax(x, y);
  }
  return y;
}

void softmax_(Tensor& x) {
  check_input("softmax_", x);
  if (!support::skip_compute(x) && x.numel() > 0) {
    run_softmax(x, x);
  }
}

}  // namespace ethereal::cpu
