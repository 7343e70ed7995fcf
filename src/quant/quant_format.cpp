#include "quant/quant_format.h"

#include <fmt/format.h>

#include <string>

#include "runtime/error.h"

namespace ethereal::quant {

namespace {

std::string describe_tensor(const Tensor& tensor) {
  return tensor.defined() ? tensor.describe() : "an undefined tensor";
}

std::string weight_label(std::string_view name) {
  return name.empty() ? std::string("quantised weight") : fmt::format("quantised weight {}", name);
}

// Throws unless `tensor` is a contiguous `dtype` tensor of shape `shape`.
void require_tensor(std::string_view name, std::string_view field, const Tensor& tensor,
                    DType dtype, const Shape& shape) {
  if (!tensor.defined() || tensor.dtype() != dtype || tensor.shape() != shape ||
      !tensor.is_contiguous()) {
    throw InvalidInputError(fmt::format(
        "{}: field {} is {}; expected a contiguous {}{} tensor; re-quantise the weight or check "
        "the file it came from",
        weight_label(name), field, describe_tensor(tensor), dtype_name(dtype), shape_str(shape)));
  }
}

void require_undefined(std::string_view name, std::string_view field, const Tensor& tensor,
                       QuantFormat format) {
  if (tensor.defined()) {
    throw InvalidInputError(fmt::format("{}: field {} is {}; the {} format has no such field",
                                        weight_label(name), field, tensor.describe(),
                                        quant_format_name(format)));
  }
}

}  // namespace

std::string_view quant_format_name(QuantFormat format) {
  switch (format) {
    case QuantFormat::fp8_e4m3: return "fp8_e4m3";
    case QuantFormat::nf4: return "nf4";
    case QuantFormat::int8: return "int8";
  }
  return "unknown";
}

QuantFormat parse_quant_format(std::string_view name) {
  for (QuantFormat format : {QuantFormat::fp8_e4m3, QuantFormat::nf4, QuantFormat::int8}) {
    if (name == quant_format_name(format)) {
      return format;
    }
  }
  throw InvalidInputError(
      fmt::format("invalid quantisation format \"{}\": expected one of fp8_e4m3, nf4, int8", name));
}

std::size_t QuantizedWeight::nbytes() const {
  std::size_t total = 0;
  for (const Tensor* part :
       {&values, &scales, &nf4.absmax_codes, &nf4.group_scales, &nf4.code_map}) {
    if (part->defined()) {
      total += part->nbytes();
    }
  }
  return total;
}

std::int64_t QuantizedWeight::nf4_block_count() const {
  return (out_features * in_features + kNf4BlockSize - 1) / kNf4BlockSize;
}

void validate(const QuantizedWeight& weight, std::string_view name) {
  if (weight.out_features <= 0 || weight.in_features <= 0) {
    throw InvalidInputError(
        fmt::format("{}: shape [{}, {}] is invalid; both sizes must be positive",
                    weight_label(name), weight.out_features, weight.in_features));
  }
  const Shape matrix = {weight.out_features, weight.in_features};
  switch (weight.format) {
    case QuantFormat::fp8_e4m3: {
      require_tensor(name, "values", weight.values, DType::fp8_e4m3, matrix);
      const bool per_tensor = weight.scales.defined() && weight.scales.shape() == Shape{1};
      require_tensor(name, "scales", weight.scales, DType::f32,
                     per_tensor ? Shape{1} : Shape{weight.out_features});
      break;
    }
    case QuantFormat::int8:
      require_tensor(name, "values", weight.values, DType::int8, matrix);
      require_tensor(name, "scales", weight.scales, DType::f32, {weight.out_features});
      break;
    case QuantFormat::nf4: {
      const std::int64_t blocks = weight.nf4_block_count();
      const std::int64_t groups = (blocks + kNf4AbsmaxGroupSize - 1) / kNf4AbsmaxGroupSize;
      require_tensor(name, "values", weight.values, DType::packed4, matrix);
      require_undefined(name, "scales", weight.scales, weight.format);
      require_tensor(name, "nf4.absmax_codes", weight.nf4.absmax_codes, DType::uint8, {blocks});
      require_tensor(name, "nf4.group_scales", weight.nf4.group_scales, DType::f32, {groups});
      require_tensor(name, "nf4.code_map", weight.nf4.code_map, DType::f32, {256});
      break;
    }
  }
  if (weight.format != QuantFormat::nf4) {
    require_undefined(name, "nf4.absmax_codes", weight.nf4.absmax_codes, weight.format);
  }
}

}  // namespace ethereal::quant
