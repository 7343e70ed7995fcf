#include "kernels/cpu/activation.h"

#include "kernels/cpu/kernel_support.h"

namespace ethereal::cpu {

namespace {

using simd::chunk_lanes;
using simd::kLanes;
using simd::load_chunk;
using simd::store_chunk;
using simd::Vec16;

struct GeluTanh {
  static Vec16 apply(Vec16 x) {
    // 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)). exp overflows to +inf for very negative x and
    // the quotient becomes -0, the limit of GELU.
    const Vec16 x3 = x * x * x;
    const Vec16 u2 = (x + Vec16(0.044715f) * x3) * Vec16(-2.0f * 0.7978845608028654f);
    return x / (Vec16(1.0f) + simd::exp(u2));
  }
};

struct GeluErf {
  static Vec16 apply(Vec16 x) {
    const Vec16 half_x = x * Vec16(0.5f);
    return half_x + half_x * simd::erf(x * Vec16(0.7071067811865476f));
  }
};

struct Silu {
  static Vec16 apply(Vec16 x) { return x / (Vec16(1.0f) + simd::exp(Vec16(0.0f) - x)); }
};

template <typename Op>
void run_unary(const Tensor& x, const Tensor& y) {
  const std::int64_t n = support::RowIndexer(x).cols();  // 1 for a 0-d tensor
  support::dispatch_float(x.dtype(), [&](auto element) {
    using T = decltype(element);
    support::for_each_row<T, T>(x, y, [&](const T* in, T* out) {
      for (std::int64_t i = 0; i < n; i += kLanes) {
        const int lanes = chunk_lanes(i, n);
        store_chunk(out + i, Op::apply(load_chunk(in + i, lanes)), lanes);
      }
    });
  });
}

void check_input(const char* kernel, const Tensor& x) {
  support::require_float(kernel, "x", x);
  support::require_unit_last_stride(kernel, "x", x);
}

template <typename Op>
Tensor unary(const char* kernel, const Tensor& x) {
  check_input(kernel, x);
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  if (!support::skip_compute(x) && x.numel() > 0) {
    run_unary<Op>(x, y);
  }
  return y;
}

template <typename Op>
void unary_(const char* kernel, Tensor& x) {
  check_input(kernel, x);
  if (!support::skip_compute(x) && x.numel() > 0) {
    run_unary<Op>(x, x);
  }
}

// silu(gate) * up row by row. The rows of `gate`, `up` and `out` are addressed separately, so
// each may be a strided view.
void run_swiglu(const Tensor& gate, const Tensor& up, const Tensor& out) {
  const support::RowIndexer gate_rows(gate);
  const support::RowIndexer up_rows(up);
  const support::RowIndexer out_rows(out);
  const std::int64_t n = gate_rows.cols();
  support::dispatch_float(gate.dtype(), [&](auto gate_element) {
    using T = decltype(gate_element);
    support::dispatch_float(up.dtype(), [&](auto up_element) {
      using U = decltype(up_element);
      const T* g = gate.data_as<T>();
      const U* u = up.data_as<U>();
      T* o = out.data_as<T>();
      parallel_for(0, gate_rows.rows(), support::row_grain(n), [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t row = b; row < e; ++row) {
          const T* g_row = g + gate_rows.offset(row);
          const U* u_row = u + up_rows.offset(row);
          T* o_row = o + out_rows.offset(row);
          for (std::int64_t i = 0; i < n; i += kLanes) {
            const int lanes = chunk_lanes(i, n);
            const Vec16 value =
                Silu::apply(load_chunk(g_row + i, lanes)) * load_chunk(u_row + i, lanes);
            store_chunk(o_row + i, value, lanes);
          }
        }
      });
    });
  });
}

void check_swiglu(const char* kernel, const Tensor& gate, const Tensor& up) {
  support::require_float(kernel, "gate", gate);
  support::require_float(kernel, "up", up);
  support::require_same_shape(kernel, "gate", gate, "up", up);
  support::require_unit_last_stride(kernel, "gate", gate);
  support::require_unit_last_stride(kernel, "up", up);
}

}  // namespace

Tensor gelu_tanh(const Tensor& x) {
  return unary<GeluTanh>("gelu_tanh", x);
}
void gelu_tanh_(Tensor& x) {
  unary_<GeluTanh>("gelu_tanh_", x);
}
Tensor gelu_erf(const Tensor& x) {
  return unary<GeluErf>("gelu_erf", x);
}
void gelu_erf_(Tensor& x) {
  unary_<GeluErf>("gelu_erf_", x);
}
Tensor silu(const Tensor& x) {
  return unary<Silu>("silu", x);
}
void silu_(Tensor& x) {
  unary_<Silu>("silu_", x);
}

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  check_swiglu("swiglu", gate, up);
  Tensor out = Tensor::empty(gate.shape(), gate.dtype());
  if (!support::skip_compute(gate, up) && gate.numel() > 0) {
    run_swiglu(gate, up, out);
  }
  return out;
}

void swiglu_(Tensor& gate, const Tensor& up) {
  check_swiglu("swiglu_", gate, up);
  if (!support::skip_compute(gate, up) && gate.numel() > 0) {
    run_swiglu(gate, up, gate);
  }
}

}  // namespace ethereal::cpu
