#include "kernels/cpu/elementwise.h"

#include <algorithm>
#include <array>

#include <fmt/format.h>

#include "kernels/cpu/kernel_support.h"
#include "runtime/parallel.h"

namespace ethereal::cpu {

namespace {

using simd::chunk_lanes;
using simd::kLanes;
using simd::Vec16;

// Operand order in the loop plan.
constexpr int kOut = 0;
constexpr int kA = 1;
constexpr int kB = 2;
constexpr int kOperands = 3;

// Elements of one parallel work item along the innermost axis (a multiple of 16).
constexpr std::int64_t kInnerBlock = 8192;

// The iteration space of a broadcast operation after dropping extent-1 axes and merging axes
// whose strides nest in all operands: an innermost run of `inner` elements repeated over the
// outer axes.
struct LoopPlan {
  Shape outer_extents;  // innermost last
  std::array<Shape, kOperands> outer_strides;
  std::int64_t outer_count = 1;
  std::int64_t inner = 1;
  std::array<std::int64_t, kOperands> inner_strides{};

  std::array<std::int64_t, kOperands> offsets(std::int64_t outer_index) const {
    std::array<std::int64_t, kOperands> result{};
    for (std::size_t axis = outer_extents.size(); axis-- > 0;) {
      const std::int64_t i = outer_index % outer_extents[axis];
      outer_index /= outer_extents[axis];
      for (int op = 0; op < kOperands; ++op) {
        result[op] += i * outer_strides[op][axis];
      }
    }
    return result;
  }
};

// Strides of `t` over `shape` (its broadcast target): 0 along stretched or missing axes.
Shape broadcast_strides(const Tensor& t, const Shape& shape) {
  Shape strides(shape.size(), 0);
  const std::size_t lead = shape.size() - static_cast<std::size_t>(t.dim());
  for (std::size_t axis = lead; axis < shape.size(); ++axis) {
    const auto source_axis = static_cast<std::int64_t>(axis - lead);
    strides[axis] = t.size(source_axis) == 1 ? 0 : t.stride(source_axis);
  }
  return strides;
}

LoopPlan plan_loop(const Shape& shape, const std::array<Shape, kOperands>& strides) {
  // Collapsed axes, innermost first.
  Shape extents;
  std::array<Shape, kOperands> collapsed;
  for (std::size_t axis = shape.size(); axis-- > 0;) {
    if (shape[axis] == 1) {
      continue;
    }
    bool merge = !extents.empty();
    for (int op = 0; op < kOperands && merge; ++op) {
      merge = strides[op][axis] == collapsed[op].back() * extents.back();
    }
    if (merge) {
      extents.back() *= shape[axis];
      continue;
    }
    extents.push_back(shape[axis]);
    for (int op = 0; op < kOperands; ++op) {
      collapsed[op].push_back(strides[op][axis]);
    }
  }
  LoopPlan plan;
  if (extents.empty()) {
    return plan;
  }
  plan.inner = extents.front();
  for (int op = 0; op < kOperands; ++op) {
    plan.inner_strides[op] = collapsed[op].front();
    plan.outer_strides[op].assign(collapsed[op].rbegin(), collapsed[op].rend() - 1);
  }
  plan.outer_extents.assign(extents.rbegin(), extents.rend() - 1);
  plan.outer_count = shape_numel(plan.outer_extents);
  return plan;
}

struct AddOp {
  static constexpr bool kUnary = false;
  Vec16 apply(Vec16 a, Vec16 b) const { return a + b; }
};
struct SubOp {
  static constexpr bool kUnary = false;
  Vec16 apply(Vec16 a, Vec16 b) const { return a - b; }
};
struct MulOp {
  static constexpr bool kUnary = false;
  Vec16 apply(Vec16 a, Vec16 b) const { return a * b; }
};
struct AddScaledOp {
  static constexpr bool kUnary = false;
  float alpha;
  Vec16 apply(Vec16 a, Vec16 b) const { return simd::fma(b, Vec16(alpha), a); }
};
struct ScaleOp {
  static constexpr bool kUnary = true;
  float factor;
  Vec16 apply(Vec16 a, Vec16) const { return a * Vec16(factor); }
};

// Loads `lanes` elements with stride 1, or broadcasts one element when the stride is 0.
template <typename T>
Vec16 load_operand(const T* p, std::int64_t stride, int lanes) {
  return stride == 0 ? Vec16(simd::to_f32(*p)) : simd::load_chunk(p, lanes);
}

// One run of `count` elements starting at the given pointers.
template <typename TA, typename TB, typename Op>
void run_segment(TA* out, const TA* a, const TB* b, std::int64_t count,
                 const std::array<std::int64_t, kOperands>& s, const Op& op) {
  const bool vector = s[kOut] == 1 && (s[kA] == 0 || s[kA] == 1) && (s[kB] == 0 || s[kB] == 1);
  if (vector) {
    for (std::int64_t i = 0; i < count; i += kLanes) {
      const int lanes = chunk_lanes(i, count);
      const Vec16 va = load_operand(a + i * s[kA], s[kA], lanes);
      Vec16 vb;
      if constexpr (!Op::kUnary) {
        vb = load_operand(b + i * s[kB], s[kB], lanes);
      }
      simd::store_chunk(out + i, op.apply(va, vb), lanes);
    }
    return;
  }
  for (std::int64_t i = 0; i < count; ++i) {
    Vec16 va(simd::to_f32(a[i * s[kA]]));
    Vec16 vb;
    if constexpr (!Op::kUnary) {
      vb = Vec16(simd::to_f32(b[i * s[kB]]));
    }
    float value[kLanes];
    op.apply(va, vb).store(value);
    out[i * s[kOut]] = simd::from_f32<TA>(value[0]);
  }
}

// out = op(a, b) over out's shape, with a and b broadcast to it. For a unary op `b` is unused.
template <typename Op>
void run_binary(const Tensor& out, const Tensor& a, const Tensor& b, const Op& op) {
  const Shape& shape = out.shape();
  std::array<Shape, kOperands> strides;
  strides[kOut] = out.strides();
  strides[kA] = broadcast_strides(a, shape);
  strides[kB] = Op::kUnary ? Shape(shape.size(), 0) : broadcast_strides(b, shape);
  const LoopPlan plan = plan_loop(shape, strides);
  const std::int64_t blocks = (plan.inner + kInnerBlock - 1) / kInnerBlock;
  support::dispatch_float(a.dtype(), [&](auto a_element) {
    using TA = decltype(a_element);
    support::dispatch_float(Op::kUnary ? DType::f32 : b.dtype(), [&](auto b_element) {
      using TB = decltype(b_element);
      TA* out_base = out.data_as<TA>();
      const TA* a_base = a.data_as<TA>();
      const TB* b_base = Op::kUnary ? nullptr : b.data_as<TB>();
      const std::int64_t grain = std::max<std::int64_t>(1, kInnerBlock / plan.inner);
      parallel_for(0, plan.outer_count * blocks, grain, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t item = begin; item < end; ++item) {
          const auto base = plan.offsets(item / blocks);
          const std::int64_t start = (item % blocks) * kInnerBlock;
          const std::int64_t count = std::min(kInnerBlock, plan.inner - start);
          const auto& s = plan.inner_strides;
          run_segment(out_base + base[kOut] + start * s[kOut], a_base + base[kA] + start * s[kA],
                      b_base == nullptr ? nullptr : b_base + base[kB] + start * s[kB], count, s,
                      op);
        }
      });
    });
  });
}

template <typename Op>
Tensor binary(const char* kernel, const Tensor& a, const Tensor& b, const Op& op) {
  support::require_float(kernel, "a", a);
  support::require_float(kernel, "b", b);
  Tensor out = Tensor::empty(broadcast_shapes(a.shape(), b.shape()), a.dtype());
  if (!support::skip_compute(a, b) && out.numel() > 0) {
    run_binary(out, a, b, op);
  }
  return out;
}

template <typename Op>
void binary_(const char* kernel, Tensor& a, const Tensor& b, const Op& op) {
  support::require_float(kernel, "a", a);
  support::require_float(kernel, "b", b);
  const Shape shape = broadcast_shapes(a.shape(), b.shape());
  if (shape != a.shape()) {
    throw Error(
        fmt::format("{}: 'b' {} must broadcast to the shape of 'a' {} for an in-place "
                    "update, but the broadcast shape is {}",
                    kernel, shape_str(b.shape()), shape_str(a.shape()), shape_str(shape)));
  }
  if (!support::skip_compute(a, b) && a.numel() > 0) {
    run_binary(a, a, b, op);
  }
}

}  // namespace

Shape broadcast_shapes(const Shape& a, const Shape& b) {
  const std::size_t rank = std::max(a.size(), b.size());
  Shape result(rank, 1);
  for (std::size_t i = 0; i < rank; ++i) {
    const std::int64_t ea = i < a.size() ? a[a.size() - 1 - i] : 1;
    const std::int64_t eb = i < b.size() ? b[b.size() - 1 - i] : 1;
    if (ea != eb && ea != 1 && eb != 1) {
      throw Error(
          fmt::format("broadcast_shapes: shapes {} and {} do not broadcast (axis {} from "
                      "the end has extents {} and {})",
                      shape_str(a), shape_str(b), i, ea, eb));
    }
    result[rank - 1 - i] = ea == 1 ? eb : ea;
  }
  return result;
}

Tensor add(const Tensor& a, const Tensor& b) {
  return binary("add", a, b, AddOp{});
}
Tensor sub(const Tensor& a, const Tensor& b) {
  return binary("sub", a, b, SubOp{});
}
Tensor mul(const Tensor& a, const Tensor& b) {
  return binary("mul", a, b, MulOp{});
}
void add_(Tensor& a, const Tensor& b) {
  binary_("add_", a, b, AddOp{});
}
void sub_(Tensor& a, const Tensor& b) {
  binary_("sub_", a, b, SubOp{});
}
void mul_(Tensor& a, const Tensor& b) {
  binary_("mul_", a, b, MulOp{});
}
void add_scaled_(Tensor& a, const Tensor& b, float alpha) {
  binary_("add_scaled_", a, b, AddScaledOp{alpha});
}

Tensor scale(const Tensor& x, float factor) {
  support::require_float("scale", "x", x);
  Tensor out = Tensor::empty(x.shape(), x.dtype());
  if (!support::skip_compute(x) && out.numel() > 0) {
    run_binary(out, x, Tensor(), ScaleOp{factor});
  }
  return out;
}

void scale_(Tensor& x, float factor) {
  support::require_float("scale_", "x", x);
  if (!support::skip_compute(x) && x.numel() > 0) {
    run_binary(x, x, Tensor(), ScaleOp{factor});
  }
}

}  // namespace ethereal::cpu
