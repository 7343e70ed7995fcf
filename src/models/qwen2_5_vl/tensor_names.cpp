#include "models/qwen2_5_vl/tensor_names.h"

#include <array>

#include <fmt/format.h>

#include "quant/stored_weight.h"
#include "runtime/error.h"

namespace ethereal {

namespace {

constexpr std::string_view kLmHead = "lm_head.";
constexpr std::string_view kNestedText = "model.language_model.";
constexpr std::string_view kNestedVision = "model.visual.";
constexpr std::array<std::string_view, 4> kLegacyPrefixes = {"model.layers.", "model.embed_tokens.",
                                                             "model.norm.", "visual."};

bool starts_with(std::string_view name, std::string_view prefix) {
  return name.substr(0, prefix.size()) == prefix;
}

bool is_nested_name(std::string_view name) {
  return starts_with(name, kNestedText) || starts_with(name, kNestedVision);
}

bool is_legacy_name(std::string_view name) {
  for (std::string_view prefix : kLegacyPrefixes) {
    if (starts_with(name, prefix)) {
      return true;
    }
  }
  return false;
}

}  // namespace

std::optional<std::string> qwen25vl_legacy_tensor_name(std::string_view file_name) {
  if (starts_with(file_name, kLmHead) || file_name == quant::kScaledFp8Marker) {
    return std::nullopt;
  }
  return std::string(file_name);
}

std::optional<std::string> qwen25vl_nested_tensor_name(std::string_view file_name) {
  if (starts_with(file_name, kLmHead) || file_name == quant::kScaledFp8Marker) {
    return std::nullopt;
  }
  if (starts_with(file_name, kNestedText)) {
    return "model." + std::string(file_name.substr(kNestedText.size()));
  }
  if (starts_with(file_name, kNestedVision)) {
    return "visual." + std::string(file_name.substr(kNestedVision.size()));
  }
  // Left unchanged, so WeightLoader::finish() reports it as unexpected.
  return std::string(file_name);
}

Qwen25VlTensorLayout detect_qwen25vl_layout(const SafetensorsCheckpoint& checkpoint) {
  const std::string* nested = nullptr;
  const std::string* legacy = nullptr;
  for (const std::string& name : checkpoint.names()) {
    if (nested == nullptr && is_nested_name(name)) {
      nested = &name;
    } else if (legacy == nullptr && is_legacy_name(name)) {
      legacy = &name;
    }
  }
  if (nested != nullptr && legacy != nullptr) {
    throw InvalidInputError(fmt::format(
        "{}: the checkpoint mixes two Qwen2.5-VL naming layouts (\"{}\" and \"{}\"); convert "
        "it to one of them",
        checkpoint.path().string(), *nested, *legacy));
  }
  return nested != nullptr ? Qwen25VlTensorLayout::nested : Qwen25VlTensorLayout::legacy;
}

TensorNameMap qwen25vl_tensor_name_map(Qwen25VlTensorLayout layout) {
  return layout == Qwen25VlTensorLayout::nested ? TensorNameMap(qwen25vl_nested_tensor_name)
                                                : TensorNameMap(qwen25vl_legacy_tensor_name);
}

}  // namespace ethereal
