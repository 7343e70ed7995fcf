#include "quant/quant_policy.h"

namespace ethereal::quant {
namespace {

bool starts_with_module(std::string_view module, std::string_view prefix) {
  return module == prefix || (module.size() > prefix.size() && module.starts_with(prefix) &&
                              module[prefix.size()] == '.');
}

}  // namespace

bool is_quantizable_linear(std::string_view component, std::string_view module) {
  if (component == "transformer") {
    return module.starts_with("transformer_blocks.");
  }
  if (component == "text_encoder" || component == "text encoder") {
    return module.starts_with("model.layers.") || module.starts_with("visual.blocks.");
  }
  return false;
}

std::optional<QuantFormat> QuantPolicy::format_of(std::string_view component,
                                                  std::string_view module) const {
  if (!format || !is_quantizable_linear(component, module)) {
    return std::nullopt;
  }
  for (const std::string& kept : keep) {
    if (starts_with_module(module, kept)) {
      return std::nullopt;
    }
  }
  return format;
}

}  // namespace ethereal::quant
