#include "models/linear_layer.h"

#include <fmt/format.h>

#include "runtime/error.h"

namespace ethereal {

LinearLayer::LinearLayer(cpu::PackedLinear packed) : impl_(std::move(packed)) {}

LinearLayer::LinearLayer(quant::QuantizedLinear quantized)
    : impl_(std::make_shared<const quant::QuantizedLinear>(std::move(quantized))) {}

namespace {

// The layer behind a variant alternative.
const cpu::PackedLinear& layer_of(const cpu::PackedLinear& layer) {
  return layer;
}
const quant::QuantizedLinear& layer_of(const std::shared_ptr<const quant::QuantizedLinear>& layer) {
  return *layer;
}

}  // namespace

Tensor LinearLayer::forward(const Tensor& x, std::optional<DType> out_dtype) const {
  Tensor out = std::visit(
      [&](const auto& layer) -> Tensor {
        if constexpr (std::is_same_v<std::decay_t<decltype(layer)>, std::monostate>) {
          throw std::logic_error("LinearLayer::forward on an empty layer");
        } else {
          return layer_of(layer).forward(x, out_dtype);
        }
      },
      impl_);
  if (!adapter_.empty()) {
    adapter_.add_to(x, out);
  }
  return out;
}

void LinearLayer::forward_into(const Tensor& x, const Tensor& out) const {
  std::visit(
      [&](const auto& layer) {
        if constexpr (std::is_same_v<std::decay_t<decltype(layer)>, std::monostate>) {
          throw std::logic_error("LinearLayer::forward_into on an empty layer");
        } else {
          layer_of(layer).forward_into(x, out);
        }
      },
      impl_);
  if (!adapter_.empty()) {
    adapter_.add_to(x, out);
  }
}

void LinearLayer::set_adapter(LowRankAdapter adapter) {
  if (!adapter.empty() &&
      (adapter.in_features() != in_features() || adapter.out_features() != out_features())) {
    throw InvalidInputError(fmt::format(
        "a low-rank update of shape [{}, {}] does not fit a linear layer of shape [{}, {}]",
        adapter.out_features(), adapter.in_features(), out_features(), in_features()));
  }
  adapter_ = std::move(adapter);
}

std::int64_t LinearLayer::in_features() const {
  if (const auto* packed_layer = std::get_if<cpu::PackedLinear>(&impl_)) {
    return packed_layer->in_features();
  }
  if (const auto* quantized_layer = std::get_if<Quantized>(&impl_)) {
    return (*quantized_layer)->in_features();
  }
  return 0;
}

std::int64_t LinearLayer::out_features() const {
  if (const auto* packed_layer = std::get_if<cpu::PackedLinear>(&impl_)) {
    return packed_layer->out_features();
  }
  if (const auto* quantized_layer = std::get_if<Quantized>(&impl_)) {
    return (*quantized_layer)->out_features();
  }
  return 0;
}

std::string LinearLayer::weight_format() const {
  if (const auto* packed_layer = std::get_if<cpu::PackedLinear>(&impl_)) {
    return std::string(dtype_name(packed_layer->packed_dtype()));
  }
  if (const auto* quantized_layer = std::get_if<Quantized>(&impl_)) {
    return std::string(quant::quant_format_name((*quantized_layer)->format()));
  }
  return "none";
}

std::size_t LinearLayer::nbytes() const {
  std::size_t bytes = adapter_.nbytes();
  if (const auto* packed_layer = std::get_if<cpu::PackedLinear>(&impl_)) {
    bytes += packed_layer->packed_weight().nbytes();
    if (packed_layer->bias().defined()) {
      bytes += packed_layer->bias().nbytes();
    }
  } else if (const auto* quantized_layer = std::get_if<Quantized>(&impl_)) {
    bytes += (*quantized_layer)->weight().nbytes();
    if ((*quantized_layer)->bias().defined()) {
      bytes += (*quantized_layer)->bias().nbytes();
    }
  }
  return bytes;
}

}  // namespace ethereal
