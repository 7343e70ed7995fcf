#include "models/qwen2_5_vl/layers.h"

#include <cstring>

#include <fmt/format.h>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/elementwise.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace ethereal {

Qwen25VlMlp Qwen25VlMlp::load(WeightLoader& loader, const std::string& prefix, std::int64_t hidden,
                              std::int64_t intermediate, bool bias, Qwen25VlActivation activation,
                              DType weight_dtype) {
  return Qwen25VlMlp{
      loader.linear(prefix + ".gate_proj", intermediate, hidden, bias, weight_dtype),
      loader.linear(prefix + ".up_proj", intermediate, hidden, bias, weight_dtype),
      loader.linear(prefix + ".down_proj", hidden, intermediate, bias, weight_dtype),
      activation,
  };
}

Tensor Qwen25VlMlp::forward(const Tensor& x) const {
  Tensor gate = gate_proj.forward(x);  // [S, intermediate]
  {
    const Tensor up = up_proj.forward(x);  // [S, intermediate]
    switch (activation) {
      case Qwen25VlActivation::silu: cpu::swiglu_(gate, up); break;
      case Qwen25VlActivation::gelu:
        cpu::gelu_erf_(gate);
        cpu::mul_(gate, up);
        break;
      case Qwen25VlActivation::gelu_tanh:
        cpu::gelu_tanh_(gate);
        cpu::mul_(gate, up);
        break;
    }
  }
  return down_proj.forward(gate);  // [S, hidden]
}

Tensor gather_row_units(const Tensor& x, std::span<const std::int64_t> order, std::int64_t unit) {
  if (x.dim() != 2 || !x.is_contiguous() || unit <= 0 ||
      static_cast<std::int64_t>(order.size()) * unit != x.size(0)) {
    throw Error(fmt::format(
        "gather_row_units: x must be contiguous [R, C] with R = {} units x {} rows, got {}",
        order.size(), unit, x.describe()));
  }
  Tensor result = Tensor::empty(x.shape(), x.dtype());
  if (result.is_dry() || x.is_dry()) {
    return result;
  }
  const std::size_t unit_bytes = dtype_bytes(x.dtype(), static_cast<std::size_t>(unit * x.size(1)));
  const auto* source = static_cast<const std::byte*>(x.data());
  auto* target = static_cast<std::byte*>(result.data());
  const auto units = static_cast<std::int64_t>(order.size());
  for (std::int64_t i = 0; i < units; ++i) {
    const std::int64_t from = order[static_cast<std::size_t>(i)];
    if (from < 0 || from >= units) {
      throw Error(fmt::format("gather_row_units: unit index {} is outside [0, {})", from, units));
    }
  }
  parallel_for(0, units, 64, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      const auto from = static_cast<std::size_t>(order[static_cast<std::size_t>(i)]);
      std::memcpy(target + static_cast<std::size_t>(i) * unit_bytes, source + from * unit_bytes,
                  unit_bytes);
    }
  });
  return result;
}

}  // namespace ethereal
