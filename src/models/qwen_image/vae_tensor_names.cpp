#include "models/qwen_image/vae_tensor_names.h"

#include <algorithm>
#include <charconv>
#include <optional>
#include <string_view>
#include <utility>

#include <fmt/format.h>

namespace ethereal {

namespace {

// Splits "12.rest" into {12, "rest"}; nullopt when `text` does not start with digits and a dot.
std::optional<std::pair<std::int64_t, std::string_view>> split_index(std::string_view text) {
  const std::size_t dot = text.find('.');
  if (dot == 0 || dot == std::string_view::npos) {
    return std::nullopt;
  }
  std::int64_t index = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + dot, index);
  if (error != std::errc() || end != text.data() + dot) {
    return std::nullopt;
  }
  return std::make_pair(index, text.substr(dot + 1));
}

// The canonical suffix of a residual-block parameter, e.g. "residual.2.weight" -> "conv1.weight".
std::optional<std::string> residual_suffix(std::string_view suffix) {
  static const std::pair<std::string_view, std::string_view> kRenames[] = {
      {"residual.0.", "norm1."}, {"residual.2.", "conv1."},       {"residual.3.", "norm2."},
      {"residual.6.", "conv2."}, {"shortcut.", "conv_shortcut."},
  };
  for (const auto& [wan, canonical] : kRenames) {
    if (suffix.starts_with(wan)) {
      return std::string(canonical) + std::string(suffix.substr(wan.size()));
    }
  }
  return std::nullopt;
}

// encoder./decoder. "middle.K.rest" -> "mid_block.(resnets.0|attentions.0|resnets.1).rest".
std::optional<std::string> map_middle(const std::string& side, std::string_view rest) {
  const auto split = split_index(rest);
  if (!split) {
    return std::nullopt;
  }
  const auto [index, suffix] = *split;
  const std::string prefix = vae_names::mid_block(side);
  if (index == 1) {
    return prefix + ".attentions.0." + std::string(suffix);
  }
  if (index != 0 && index != 2) {
    return std::nullopt;
  }
  const std::optional<std::string> renamed = residual_suffix(suffix);
  if (!renamed) {
    return std::nullopt;
  }
  return fmt::format("{}.resnets.{}.{}", prefix, index / 2, *renamed);
}

// "head.0.gamma" -> "norm_out.gamma", "head.2.weight" -> "conv_out.weight".
std::optional<std::string> map_head(const std::string& side, std::string_view rest) {
  if (rest.starts_with("0.")) {
    return side + ".norm_out." + std::string(rest.substr(2));
  }
  if (rest.starts_with("2.")) {
    return side + ".conv_out." + std::string(rest.substr(2));
  }
  return std::nullopt;
}

std::optional<std::string> map_encoder_down(std::string_view rest) {
  const auto split = split_index(rest);
  if (!split) {
    return std::nullopt;
  }
  const auto [index, suffix] = *split;
  const std::string prefix = vae_names::encoder_down_block(index);
  if (suffix.starts_with("resample.") || suffix.starts_with("time_conv.")) {
    return prefix + "." + std::string(suffix);
  }
  const std::optional<std::string> renamed = residual_suffix(suffix);
  if (!renamed) {
    return std::nullopt;
  }
  return prefix + "." + *renamed;
}

std::optional<std::string> map_decoder_up(std::string_view rest, std::int64_t num_res_blocks) {
  const auto split = split_index(rest);
  if (!split) {
    return std::nullopt;
  }
  const auto [index, suffix] = *split;
  const std::int64_t layers_per_stage = num_res_blocks + 2;  // resnets + one upsampler
  const std::int64_t stage = index / layers_per_stage;
  const std::int64_t layer = index % layers_per_stage;
  if (layer == num_res_blocks + 1) {
    if (!suffix.starts_with("resample.") && !suffix.starts_with("time_conv.")) {
      return std::nullopt;
    }
    return vae_names::decoder_upsampler(stage) + "." + std::string(suffix);
  }
  const std::optional<std::string> renamed = residual_suffix(suffix);
  if (!renamed) {
    return std::nullopt;
  }
  return vae_names::decoder_resnet(stage, layer) + "." + *renamed;
}

std::optional<std::string> map_wan_name(std::string_view name, std::int64_t num_res_blocks) {
  if (name.starts_with("conv1.")) {
    return "quant_conv." + std::string(name.substr(6));
  }
  if (name.starts_with("conv2.")) {
    return "post_quant_conv." + std::string(name.substr(6));
  }
  for (const std::string side : {"encoder", "decoder"}) {
    if (!name.starts_with(side + ".")) {
      continue;
    }
    const std::string_view rest = name.substr(side.size() + 1);
    if (rest.starts_with("conv1.")) {
      return side + ".conv_in." + std::string(rest.substr(6));
    }
    if (rest.starts_with("middle.")) {
      return map_middle(side, rest.substr(7));
    }
    if (rest.starts_with("head.")) {
      return map_head(side, rest.substr(5));
    }
    if (side == "encoder" && rest.starts_with("downsamples.")) {
      return map_encoder_down(rest.substr(12));
    }
    if (side == "decoder" && rest.starts_with("upsamples.")) {
      return map_decoder_up(rest.substr(10), num_res_blocks);
    }
  }
  return std::nullopt;
}

}  // namespace

TensorNameMap wan_vae_tensor_name_map(std::int64_t num_res_blocks) {
  return [num_res_blocks](std::string_view file_name) -> std::optional<std::string> {
    std::optional<std::string> canonical = map_wan_name(file_name, num_res_blocks);
    return canonical ? canonical : std::string(file_name);
  };
}

VaeTensorFormat detect_vae_tensor_format(const std::vector<std::string>& names) {
  const bool wan = std::find(names.begin(), names.end(), "encoder.conv1.weight") != names.end();
  return wan ? VaeTensorFormat::wan : VaeTensorFormat::diffusers;
}

TensorNameMap vae_tensor_name_map(VaeTensorFormat format, const QwenImageVaeConfig& config) {
  if (format == VaeTensorFormat::wan) {
    return wan_vae_tensor_name_map(config.num_res_blocks);
  }
  return identity_tensor_name;
}

namespace vae_names {

std::string encoder_down_block(std::int64_t index) {
  return fmt::format("encoder.down_blocks.{}", index);
}

std::string decoder_resnet(std::int64_t stage, std::int64_t index) {
  return fmt::format("decoder.up_blocks.{}.resnets.{}", stage, index);
}

std::string decoder_upsampler(std::int64_t stage) {
  return fmt::format("decoder.up_blocks.{}.upsamplers.0", stage);
}

std::string mid_block(const std::string& side) {
  return side + ".mid_block";
}

}  // namespace vae_names

}  // namespace ethereal
