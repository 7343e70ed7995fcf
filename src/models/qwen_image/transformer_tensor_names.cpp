#include "models/qwen_image/transformer_tensor_names.h"

#include <string>

#include "quant/stored_weight.h"

namespace ethereal {

namespace {

std::string_view strip_prefix(std::string_view name) {
  if (name.substr(0, kComfyDiffusionModelPrefix.size()) == kComfyDiffusionModelPrefix) {
    name.remove_prefix(kComfyDiffusionModelPrefix.size());
  }
  return name;
}

}  // namespace

std::optional<std::string> comfy_transformer_tensor_name(std::string_view file_name) {
  const std::string_view name = strip_prefix(file_name);
  if (name == kIndexTimestepZeroMarker || name == quant::kScaledFp8Marker) {
    return std::nullopt;
  }
  return std::string(name);
}

bool checkpoint_sets_zero_cond_t(const SafetensorsCheckpoint& checkpoint) {
  const std::string prefixed =
      std::string(kComfyDiffusionModelPrefix) + std::string(kIndexTimestepZeroMarker);
  return checkpoint.contains(kIndexTimestepZeroMarker) || checkpoint.contains(prefixed);
}

}  // namespace ethereal
