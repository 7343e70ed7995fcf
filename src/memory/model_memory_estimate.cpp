#include "memory/model_memory_estimate.h"

#include <algorithm>
#include <optional>

#include <fmt/format.h>

#include "io/model_directory.h"
#include "models/qwen2_5_vl/tensor_names.h"
#include "models/qwen_image/transformer_tensor_names.h"
#include "models/weight_loader.h"
#include "quant/quant_policy.h"
#include "runtime/error.h"

namespace ethereal::memory {

namespace {

constexpr std::string_view kWeightSuffix = ".weight";
constexpr std::uint64_t kBf16Bytes = 2;
constexpr std::uint64_t kScaleBytes = 4;  // f32
constexpr std::uint64_t kNf4CodeMapBytes = 256 * kScaleBytes;

std::uint64_t ceil_div(std::uint64_t a, std::uint64_t b) {
  return (a + b - 1) / b;
}

// The module of a quantisable linear weight ("transformer_blocks.0.attn.to_q"), or nullopt
// when the tensor keeps its stored form.
std::optional<std::string_view> quantizable_module(std::string_view component,
                                                   std::string_view canonical_name,
                                                   const TensorInfo& info) {
  if (info.shape.size() != 2 || !canonical_name.ends_with(kWeightSuffix)) {
    return std::nullopt;
  }
  const std::string_view module =
      canonical_name.substr(0, canonical_name.size() - kWeightSuffix.size());
  if (!quant::is_quantizable_linear(component, module)) {
    return std::nullopt;
  }
  return module;
}

ComponentWeightBytes estimate_component(const ModelDirectory& directory, ModelComponent component) {
  const std::string_view name = component_name(component);
  const SafetensorsCheckpoint checkpoint = directory.open_weights(component);
  TensorNameMap canonical_name = identity_tensor_name;
  if (component == ModelComponent::transformer) {
    canonical_name = comfy_transformer_tensor_name;
  } else if (component == ModelComponent::text_encoder) {
    canonical_name = qwen25vl_tensor_name_map(detect_qwen25vl_layout(checkpoint));
  }

  ComponentWeightBytes result;
  result.component = std::string(name);
  std::uint64_t unchanged_bytes = 0;  // tensors that every format keeps as stored
  std::map<std::string, std::uint64_t> quantized_bytes;
  for (const std::string& file_name : checkpoint.names()) {
    const std::optional<std::string> canonical = canonical_name(file_name);
    if (!canonical) {
      continue;
    }
    const TensorInfo& info = checkpoint.info(file_name);
    ++result.tensor_count;
    result.stored_bytes += info.nbytes();
    if (!quantizable_module(name, *canonical, info)) {
      unchanged_bytes += info.nbytes();
      continue;
    }
    const std::int64_t out_features = info.shape[0];
    const std::int64_t in_features = info.shape[1];
    const std::uint64_t elements =
        static_cast<std::uint64_t>(out_features) * static_cast<std::uint64_t>(in_features);
    ++result.quantizable_tensor_count;
    result.quantizable_element_count += elements;
    quantized_bytes["bf16"] += elements * kBf16Bytes;
    for (const quant::QuantFormat format :
         {quant::QuantFormat::fp8_e4m3, quant::QuantFormat::nf4, quant::QuantFormat::int8}) {
      quantized_bytes[std::string(quant::quant_format_name(format))] +=
          quantized_weight_bytes(format, out_features, in_features);
    }
  }
  for (const std::string_view format : kWeightFormatNames) {
    result.bytes_per_format[std::string(format)] =
        unchanged_bytes + quantized_bytes[std::string(format)];
  }
  return result;
}

}  // namespace

std::uint64_t quantized_weight_bytes(quant::QuantFormat format, std::int64_t out_features,
                                     std::int64_t in_features) {
  if (out_features <= 0 || in_features <= 0) {
    throw InvalidInputError(
        fmt::format("linear weight shape [{}, {}] is invalid; both sizes must be positive",
                    out_features, in_features));
  }
  const std::uint64_t out = static_cast<std::uint64_t>(out_features);
  const std::uint64_t elements = out * static_cast<std::uint64_t>(in_features);
  switch (format) {
    case quant::QuantFormat::fp8_e4m3:
    case quant::QuantFormat::int8: return elements + out * kScaleBytes;
    case quant::QuantFormat::nf4: {
      const std::uint64_t blocks = ceil_div(elements, quant::kNf4BlockSize);
      const std::uint64_t groups = ceil_div(blocks, quant::kNf4AbsmaxGroupSize);
      return ceil_div(elements, 2) + blocks + groups * kScaleBytes + kNf4CodeMapBytes;
    }
  }
  throw InvalidInputError("quantized_weight_bytes: unknown weight format");
}

std::uint64_t ModelMemoryEstimate::total_bytes(std::string_view format) const {
  if (std::find(kWeightFormatNames.begin(), kWeightFormatNames.end(), format) ==
      kWeightFormatNames.end()) {
    throw InvalidInputError(fmt::format(
        "unknown weight format '{}'; valid formats: bf16, fp8_e4m3, nf4, int8", format));
  }
  std::uint64_t total = 0;
  for (const ComponentWeightBytes& component : components) {
    total += component.bytes_per_format.at(std::string(format));
  }
  return total;
}

nlohmann::json ModelMemoryEstimate::to_json() const {
  nlohmann::json component_list = nlohmann::json::array();
  for (const ComponentWeightBytes& c : components) {
    component_list.push_back({{"component", c.component},
                              {"stored_bytes", c.stored_bytes},
                              {"tensor_count", c.tensor_count},
                              {"quantizable_tensor_count", c.quantizable_tensor_count},
                              {"quantizable_element_count", c.quantizable_element_count},
                              {"bytes_per_format", c.bytes_per_format}});
  }
  nlohmann::json totals = nlohmann::json::object();
  for (const std::string_view format : kWeightFormatNames) {
    totals[std::string(format)] = total_bytes(format);
  }
  return {{"components", component_list}, {"total_bytes_per_format", totals}};
}

ModelMemoryEstimate estimate_model_memory(const std::filesystem::path& model_directory) {
  const ModelDirectory directory = ModelDirectory::open(model_directory);
  ModelMemoryEstimate estimate;
  for (const ModelComponent component :
       {ModelComponent::transformer, ModelComponent::text_encoder, ModelComponent::vae}) {
    if (directory.has(component)) {
      estimate.components.push_back(estimate_component(directory, component));
    }
  }
  return estimate;
}

}  // namespace ethereal::memory
