#include "models/qwen_image/vae_config.h"

#include <cmath>
#include <fstream>
#include <type_traits>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "runtime/error.h"

namespace ethereal {

namespace {

// Per-channel latent statistics of the Wan-2.1 VAE, which Qwen-Image keeps (diffusers
// defaults of AutoencoderKLQwenImage).
const std::vector<float> kQwenImageLatentsMean = {
    -0.7571f, -0.7089f, -0.9113f, 0.1075f,  -0.1745f, 0.9653f,  -0.1517f, 1.5508f,
    0.4134f,  -0.0715f, 0.5517f,  -0.3632f, -0.1922f, -0.9497f, 0.2503f,  -0.2921f};
const std::vector<float> kQwenImageLatentsStd = {
    2.8184f, 1.4541f, 2.3275f, 2.6558f, 1.2196f, 1.7708f, 2.6052f, 2.0743f,
    3.2687f, 2.1526f, 2.8652f, 1.5579f, 1.6382f, 1.1253f, 2.8251f, 1.9160f};

// nlohmann converts between numbers and booleans silently. A config with "base_dim": 9.5 or
// "num_res_blocks": true is a broken file, not a value to round.
template <typename T>
bool has_type(const nlohmann::json& value) {
  if constexpr (std::is_same_v<T, bool>) {
    return value.is_boolean();
  } else if constexpr (std::is_integral_v<T>) {
    return value.is_number_integer();
  } else if constexpr (std::is_floating_point_v<T>) {
    return value.is_number();
  } else {
    return value.is_string();
  }
}

template <typename T>
T read_key(const nlohmann::json& document, const std::string& key, T fallback,
           const std::string& source) {
  if (!document.contains(key) || document[key].is_null()) {
    return fallback;
  }
  const nlohmann::json& value = document[key];
  if (!has_type<T>(value)) {
    throw InvalidInputError(fmt::format("{}: key \"{}\" has the wrong type ({}): {}", source, key,
                                        value.type_name(), value.dump()));
  }
  return value.get<T>();
}

template <typename T>
std::vector<T> read_list(const nlohmann::json& document, const std::string& key,
                         std::vector<T> fallback, const std::string& source) {
  if (!document.contains(key) || document[key].is_null()) {
    return fallback;
  }
  const nlohmann::json& value = document[key];
  if (!value.is_array()) {
    throw InvalidInputError(fmt::format("{}: key \"{}\" must be a list, got {}: {}", source, key,
                                        value.type_name(), value.dump()));
  }
  std::vector<T> result;
  for (std::size_t i = 0; i < value.size(); ++i) {
    if (!has_type<T>(value[i])) {
      throw InvalidInputError(fmt::format("{}: key \"{}\" entry {} has the wrong type ({}): {}",
                                          source, key, i, value[i].type_name(), value.dump()));
    }
    result.push_back(value[i].get<T>());
  }
  return result;
}

// Channel counts: every stage keeps at least one channel.
void validate_channels(const QwenImageVaeConfig& config, const std::string& source) {
  if (config.base_dim <= 0) {
    throw InvalidInputError(
        fmt::format("{}: \"base_dim\" must be positive, got {}", source, config.base_dim));
  }
  if (config.z_dim <= 0) {
    throw InvalidInputError(
        fmt::format("{}: \"z_dim\" must be positive, got {}", source, config.z_dim));
  }
  // Eight stages already compress by 2^7 = 128; the bound keeps spatial_factor() small.
  if (config.dim_mult.empty() || config.dim_mult.size() > 8) {
    throw InvalidInputError(
        fmt::format("{}: \"dim_mult\" must list 1 to 8 channel multipliers, got {} entries", source,
                    config.dim_mult.size()));
  }
  for (std::int64_t multiplier : config.dim_mult) {
    if (multiplier <= 0) {
      throw InvalidInputError(fmt::format("{}: \"dim_mult\" entries must be positive, got [{}]",
                                          source, fmt::join(config.dim_mult, ", ")));
    }
  }
  // Each up-sampling step halves the channels (rounding down, as diffusers does).
  const std::vector<std::int64_t> dims = config.decoder_dims();
  for (std::int64_t stage = 0; stage + 1 < config.stage_count(); ++stage) {
    if (dims[static_cast<std::size_t>(stage) + 1] < 2) {
      throw InvalidInputError(fmt::format(
          "{}: \"base_dim\" {} with \"dim_mult\" [{}] leaves no channels after up-sampling "
          "stage {}; use a larger base_dim",
          source, config.base_dim, fmt::join(config.dim_mult, ", "), stage));
    }
  }
  if (config.num_res_blocks < 1) {
    throw InvalidInputError(fmt::format("{}: \"num_res_blocks\" must be at least 1, got {}", source,
                                        config.num_res_blocks));
  }
  if (config.input_channels <= 0) {
    throw InvalidInputError(fmt::format("{}: \"input_channels\" must be positive, got {}", source,
                                        config.input_channels));
  }
}

// Per-stage lists and options that must fit dim_mult or are unsupported.
void validate_stages(const QwenImageVaeConfig& config, const std::string& source) {
  if (!config.attn_scales.empty()) {
    throw InvalidInputError(fmt::format(
        "{}: \"attn_scales\" is [{}]; attention blocks outside the mid blocks are not supported "
        "(the Qwen-Image VAE uses an empty list)",
        source, fmt::join(config.attn_scales, ", ")));
  }
  if (static_cast<std::int64_t>(config.temperal_downsample.size()) != config.stage_count() - 1) {
    throw InvalidInputError(fmt::format(
        "{}: \"temperal_downsample\" has {} entries but \"dim_mult\" has {} stages, which need "
        "{} (one per down-sampling step)",
        source, config.temperal_downsample.size(), config.dim_mult.size(),
        config.stage_count() - 1));
  }
  if (!(config.dropout >= 0.0 && config.dropout < 1.0)) {
    throw InvalidInputError(
        fmt::format("{}: \"dropout\" must be in [0, 1), got {}", source, config.dropout));
  }
}

// latents_mean / latents_std: z_dim finite values each, std positive.
void validate_latent_statistics(const QwenImageVaeConfig& config, const std::string& source) {
  if (static_cast<std::int64_t>(config.latents_mean.size()) != config.z_dim ||
      static_cast<std::int64_t>(config.latents_std.size()) != config.z_dim) {
    throw InvalidInputError(
        fmt::format("{}: \"latents_mean\" and \"latents_std\" must have z_dim = {} values "
                    "each, got {} and {}",
                    source, config.z_dim, config.latents_mean.size(), config.latents_std.size()));
  }
  for (std::size_t c = 0; c < config.latents_std.size(); ++c) {
    if (!(std::isfinite(config.latents_std[c]) && config.latents_std[c] > 0.0f) ||
        !std::isfinite(config.latents_mean[c])) {
      throw InvalidInputError(fmt::format(
          "{}: \"latents_std\" values must be positive and \"latents_mean\" values finite; "
          "channel {} has mean {} and std {}",
          source, c, config.latents_mean[c], config.latents_std[c]));
    }
  }
}

}  // namespace

QwenImageVaeConfig QwenImageVaeConfig::qwen_image() {
  QwenImageVaeConfig config;
  config.latents_mean = kQwenImageLatentsMean;
  config.latents_std = kQwenImageLatentsStd;
  return config;
}

QwenImageVaeConfig QwenImageVaeConfig::from_json(const nlohmann::json& document,
                                                 const std::string& source) {
  if (!document.is_object()) {
    throw InvalidInputError(source + ": expected a JSON object (a diffusers VAE config.json)");
  }
  const std::string class_name =
      read_key<std::string>(document, "_class_name", "AutoencoderKLQwenImage", source);
  if (class_name != "AutoencoderKLQwenImage") {
    throw InvalidInputError(fmt::format(
        "{}: \"_class_name\" is \"{}\"; this reader supports AutoencoderKLQwenImage only (pass "
        "the vae/config.json of a Qwen-Image model)",
        source, class_name));
  }
  QwenImageVaeConfig config = qwen_image();
  config.base_dim = read_key<std::int64_t>(document, "base_dim", config.base_dim, source);
  config.z_dim = read_key<std::int64_t>(document, "z_dim", config.z_dim, source);
  config.dim_mult = read_list<std::int64_t>(document, "dim_mult", config.dim_mult, source);
  config.num_res_blocks =
      read_key<std::int64_t>(document, "num_res_blocks", config.num_res_blocks, source);
  config.attn_scales = read_list<double>(document, "attn_scales", config.attn_scales, source);
  config.temperal_downsample =
      read_list<bool>(document, "temperal_downsample", config.temperal_downsample, source);
  config.dropout = read_key<double>(document, "dropout", config.dropout, source);
  config.input_channels =
      read_key<std::int64_t>(document, "input_channels", config.input_channels, source);
  config.latents_mean = read_list<float>(document, "latents_mean", config.latents_mean, source);
  config.latents_std = read_list<float>(document, "latents_std", config.latents_std, source);
  config.validate(source);
  return config;
}

QwenImageVaeConfig QwenImageVaeConfig::from_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) {
    throw InvalidInputError(path.string() +
                            ": cannot open the VAE configuration; check that the model directory "
                            "contains vae/config.json");
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

void QwenImageVaeConfig::validate(const std::string& source) const {
  validate_channels(*this, source);
  validate_stages(*this, source);
  validate_latent_statistics(*this, source);
}

std::vector<std::int64_t> QwenImageVaeConfig::encoder_dims() const {
  std::vector<std::int64_t> dims = {base_dim};
  for (std::int64_t multiplier : dim_mult) {
    dims.push_back(base_dim * multiplier);
  }
  return dims;
}

std::vector<std::int64_t> QwenImageVaeConfig::decoder_dims() const {
  std::vector<std::int64_t> dims = {base_dim * dim_mult.back()};
  for (auto it = dim_mult.rbegin(); it != dim_mult.rend(); ++it) {
    dims.push_back(base_dim * *it);
  }
  return dims;
}

std::int64_t QwenImageVaeConfig::decoder_in_dim(std::int64_t stage) const {
  const std::int64_t nominal = decoder_dims()[static_cast<std::size_t>(stage)];
  return stage == 0 ? nominal : nominal / 2;
}

bool QwenImageVaeConfig::encoder_stage_is_temporal(std::int64_t stage) const {
  return temperal_downsample[static_cast<std::size_t>(stage)];
}

bool QwenImageVaeConfig::decoder_stage_is_temporal(std::int64_t stage) const {
  return temperal_downsample[static_cast<std::size_t>(stage_count() - 2 - stage)];
}

}  // namespace ethereal
