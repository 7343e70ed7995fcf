// A model's linear layer: y = x W^T + b with W in bf16 or f32 (cpu::PackedLinear) or in a
// quantised format (quant::QuantizedLinear), plus an optional low-rank update applied at run
// time (a LoRA kept separate from quantised weights).
//
// Models hold LinearLayer members, so the weight format is a loading decision: the same model
// code runs every format.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>

#include "kernels/cpu/linear.h"
#include "models/lora/low_rank_adapter.h"
#include "quant/quantized_linear.h"
#include "runtime/tensor.h"

namespace ethereal {

class LinearLayer {
 public:
  LinearLayer() = default;
  LinearLayer(cpu::PackedLinear packed);          // NOLINT(google-explicit-constructor)
  LinearLayer(quant::QuantizedLinear quantized);  // NOLINT(google-explicit-constructor)

  // y = x W^T + b (+ the adapter's update). x [..., in_features] f32 or bf16, any strides.
  // Returns [..., out_features] in `out_dtype` (default: x's dtype).
  Tensor forward(const Tensor& x, std::optional<DType> out_dtype = std::nullopt) const;
  // Writes into `out` [..., out_features] (contiguous, f32 or bf16).
  void forward_into(const Tensor& x, const Tensor& out) const;

  // Replaces the run-time low-rank update; an empty adapter removes it. Throws
  // InvalidInputError when its shape does not match the layer.
  void set_adapter(LowRankAdapter adapter);
  const LowRankAdapter& adapter() const { return adapter_; }

  bool empty() const { return std::holds_alternative<std::monostate>(impl_); }
  bool is_quantized() const { return std::holds_alternative<Quantized>(impl_); }
  std::int64_t in_features() const;
  std::int64_t out_features() const;
  // "bf16", "f32", "fp8_e4m3", "nf4" or "int8".
  std::string weight_format() const;
  // Bytes of the weight, bias and adapter.
  std::size_t nbytes() const;

  // The underlying layer; throws std::bad_variant_access for the other kind.
  const cpu::PackedLinear& packed() const { return std::get<cpu::PackedLinear>(impl_); }
  const quant::QuantizedLinear& quantized() const { return *std::get<Quantized>(impl_); }

 private:
  // Copies share the weights, as copies of a PackedLinear do.
  using Quantized = std::shared_ptr<const quant::QuantizedLinear>;
  std::variant<std::monostate, cpu::PackedLinear, Quantized> impl_;
  LowRankAdapter adapter_;
};

}  // namespace ethereal
