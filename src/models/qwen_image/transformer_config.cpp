#include "models/qwen_image/transformer_config.h"

#include <algorithm>
#include <fstream>
#include <numeric>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "runtime/error.h"

namespace ethereal {

namespace {

constexpr const char* kClassName = "QwenImageTransformer2DModel";

bool has_value(const nlohmann::json& document, const char* key) {
  return document.contains(key) && !document[key].is_null();
}

std::int64_t read_integer(const nlohmann::json& document, const char* key, std::int64_t fallback,
                          const std::string& source) {
  if (!has_value(document, key)) {
    return fallback;
  }
  const nlohmann::json& value = document[key];
  if (!value.is_number_integer()) {
    throw InvalidInputError(fmt::format("{}: key \"{}\" must be an integer, got {} ({})", source,
                                        key, value.dump(), value.type_name()));
  }
  return value.get<std::int64_t>();
}

bool read_bool(const nlohmann::json& document, const char* key, bool fallback,
               const std::string& source) {
  if (!has_value(document, key)) {
    return fallback;
  }
  const nlohmann::json& value = document[key];
  if (!value.is_boolean()) {
    throw InvalidInputError(fmt::format("{}: key \"{}\" must be true or false, got {} ({})", source,
                                        key, value.dump(), value.type_name()));
  }
  return value.get<bool>();
}

std::array<std::int64_t, 3> read_axes(const nlohmann::json& document,
                                      const std::array<std::int64_t, 3>& fallback,
                                      const std::string& source) {
  constexpr const char* kKey = "axes_dims_rope";
  if (!has_value(document, kKey)) {
    return fallback;
  }
  const nlohmann::json& value = document[kKey];
  if (!value.is_array() || value.size() != 3 ||
      !std::all_of(value.begin(), value.end(),
                   [](const nlohmann::json& item) { return item.is_number_integer(); })) {
    throw InvalidInputError(
        fmt::format("{}: key \"{}\" must be a list of 3 integers (frame, height, width), got {}",
                    source, kKey, value.dump()));
  }
  return {value[0].get<std::int64_t>(), value[1].get<std::int64_t>(), value[2].get<std::int64_t>()};
}

// Features of other Qwen-Image family members, which need weights or code paths this engine
// does not have.
void reject_enabled(const nlohmann::json& document, const char* key, const char* feature,
                    const std::string& source) {
  if (read_bool(document, key, false, source)) {
    throw InvalidInputError(fmt::format(
        "{}: \"{}\": true ({}) is not supported; the Qwen-Image-Edit transformers set it to "
        "false, so this config.json belongs to another model",
        source, key, feature));
  }
}

void require_positive(std::int64_t value, const char* key, const std::string& source) {
  if (value <= 0) {
    throw InvalidInputError(
        fmt::format("{}: key \"{}\" must be a positive integer, got {}", source, key, value));
  }
}

}  // namespace

QwenImageTransformerConfig QwenImageTransformerConfig::from_json(const nlohmann::json& document,
                                                                 const std::string& source) {
  if (!document.is_object()) {
    throw InvalidInputError(
        fmt::format("{}: expected a JSON object (a diffusers config.json), got {}", source,
                    document.type_name()));
  }
  if (has_value(document, "_class_name")) {
    const nlohmann::json& name = document["_class_name"];
    if (!name.is_string() || name.get<std::string>() != kClassName) {
      throw InvalidInputError(fmt::format(
          "{}: \"_class_name\" is {} but {} was expected; pass the transformer's config.json",
          source, name.dump(), kClassName));
    }
  }

  QwenImageTransformerConfig config;
  config.patch_size = read_integer(document, "patch_size", config.patch_size, source);
  config.in_channels = read_integer(document, "in_channels", config.in_channels, source);
  // diffusers: out_channels = out_channels or in_channels.
  config.out_channels = read_integer(document, "out_channels", config.in_channels, source);
  config.num_layers = read_integer(document, "num_layers", config.num_layers, source);
  config.attention_head_dim =
      read_integer(document, "attention_head_dim", config.attention_head_dim, source);
  config.num_attention_heads =
      read_integer(document, "num_attention_heads", config.num_attention_heads, source);
  config.joint_attention_dim =
      read_integer(document, "joint_attention_dim", config.joint_attention_dim, source);
  config.axes_dims_rope = read_axes(document, config.axes_dims_rope, source);
  config.zero_cond_t = read_bool(document, "zero_cond_t", config.zero_cond_t, source);

  reject_enabled(document, "guidance_embeds", "a guidance embedding", source);
  reject_enabled(document, "use_additional_t_cond",
                 "the additional timestep condition of "
                 "Qwen-Image-Layered",
                 source);
  reject_enabled(document, "use_layer3d_rope", "the layered 3-D RoPE of Qwen-Image-Layered",
                 source);
  config.validate(source);
  return config;
}

QwenImageTransformerConfig QwenImageTransformerConfig::from_file(
    const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) {
    throw InvalidInputError(
        fmt::format("{}: cannot open the transformer configuration (config.json)", path.string()));
  }
  nlohmann::json document;
  try {
    document = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& error) {
    throw InvalidInputError(
        fmt::format("{}: invalid JSON at byte {}: {}", path.string(), error.byte, error.what()));
  }
  return from_json(document, path.string());
}

void QwenImageTransformerConfig::validate(const std::string& source) const {
  require_positive(patch_size, "patch_size", source);
  require_positive(in_channels, "in_channels", source);
  require_positive(out_channels, "out_channels", source);
  require_positive(num_layers, "num_layers", source);
  require_positive(attention_head_dim, "attention_head_dim", source);
  require_positive(num_attention_heads, "num_attention_heads", source);
  require_positive(joint_attention_dim, "joint_attention_dim", source);

  const bool axes_positive_even =
      std::all_of(axes_dims_rope.begin(), axes_dims_rope.end(),
                  [](std::int64_t dim) { return dim > 0 && dim % 2 == 0; });
  if (!axes_positive_even) {
    throw InvalidInputError(fmt::format(
        "{}: key \"axes_dims_rope\" must hold 3 positive even numbers (each axis rotates pairs "
        "of channels), got {}",
        source, axes_dims_rope));
  }
  const std::int64_t axes_sum =
      std::accumulate(axes_dims_rope.begin(), axes_dims_rope.end(), std::int64_t{0});
  if (axes_sum != attention_head_dim) {
    throw InvalidInputError(fmt::format(
        "{}: key \"axes_dims_rope\" {} sums to {} but must sum to attention_head_dim {}", source,
        axes_dims_rope, axes_sum, attention_head_dim));
  }
}

}  // namespace ethereal
