// Configuration of the Qwen2.5-VL text encoder (transformers Qwen2_5_VLForConditionalGeneration):
// the language model, the vision tower and the special token ids, read from config.json.
//
// Two layouts of config.json exist. Older transformers write the language-model keys at the top
// level next to "vision_config"; newer ones nest them under "text_config". Both are read: a
// language-model key is looked up in "text_config" first and then at the top level, a special
// token id at the top level first. RoPE settings come from "rope_scaling" (type "mrope", or
// "default" with an "mrope_section"), or from the newer "rope_parameters".
//
// The dimensions of both parts are required keys, because the transformers class defaults
// (for example a 3584-wide vision tower) describe no published checkpoint. Keys with a
// value shared by every Qwen2.5-VL release (norm epsilon, RoPE theta, patch and window
// geometry, activation) default to that value. The field initialisers below are the
// Qwen2.5-VL-7B values, so a default-constructed config describes the model Qwen-Image uses.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ethereal {

// Activation of the gated MLPs (transformers ACT2FN names "silu", "gelu", "gelu_pytorch_tanh").
enum class Qwen25VlActivation { silu, gelu, gelu_tanh };

struct Qwen25VlTextConfig {
  std::int64_t hidden_size = 3584;
  std::int64_t num_hidden_layers = 28;
  std::int64_t num_attention_heads = 28;
  std::int64_t num_key_value_heads = 4;
  std::int64_t head_dim = 128;  // "head_dim" when given, else hidden_size / num_attention_heads
  std::int64_t intermediate_size = 18944;
  std::int64_t vocab_size = 152064;
  double rms_norm_eps = 1e-6;
  double rope_theta = 1000000.0;
  // Frequencies of the head_dim / 2 rotary pairs taken from the t, h and w position ids.
  std::array<std::int64_t, 3> mrope_section = {16, 24, 24};
  Qwen25VlActivation hidden_act = Qwen25VlActivation::silu;
};

struct Qwen25VlVisionConfig {
  std::int64_t depth = 32;
  std::int64_t hidden_size = 1280;
  std::int64_t intermediate_size = 3420;
  std::int64_t num_heads = 16;
  std::int64_t in_channels = 3;
  std::int64_t out_hidden_size = 3584;
  std::int64_t patch_size = 14;
  std::int64_t spatial_merge_size = 2;
  std::int64_t temporal_patch_size = 2;
  std::int64_t window_size = 112;  // pixels per window side
  // {7, 15, 23, 31}: blocks that attend over whole image frames instead of windows.
  std::vector<std::int64_t> fullatt_block_indexes = default_full_attention_blocks();
  Qwen25VlActivation hidden_act = Qwen25VlActivation::silu;

  std::int64_t head_dim() const { return hidden_size / num_heads; }
  // Values per processor row: channels x frames x patch x patch (1176 for 3 x 2 x 14 x 14).
  std::int64_t patch_values() const {
    return in_channels * temporal_patch_size * patch_size * patch_size;
  }
  // Patches merged into one language-model token (4 for a 2 x 2 merge).
  std::int64_t merge_unit() const { return spatial_merge_size * spatial_merge_size; }
  // Merged tokens per window side (112 / 14 / 2 = 4), as transformers' integer division.
  std::int64_t merged_window_size() const { return window_size / spatial_merge_size / patch_size; }
  bool is_full_attention_block(std::int64_t block) const;

  // Out of line: GCC 12 reports a false -Wmaybe-uninitialized for an inline initializer list.
  static std::vector<std::int64_t> default_full_attention_blocks();
};

struct Qwen25VlConfig {
  Qwen25VlTextConfig text;
  Qwen25VlVisionConfig vision;
  std::int64_t image_token_id = 151655;         // <|image_pad|>
  std::int64_t video_token_id = 151656;         // <|video_pad|>, -1 when the config has none
  std::int64_t vision_start_token_id = 151652;  // <|vision_start|>
  std::int64_t vision_end_token_id = 151653;    // <|vision_end|>, -1 when the config has none

  // Reads a transformers config.json document (either layout, see the top of this file).
  // Unknown keys are ignored. Missing required keys, wrong types, invalid values and
  // unsupported features (sliding-window attention, RoPE scaling other than M-RoPE) are
  // InvalidInputError naming `source` and the key.
  static Qwen25VlConfig from_json(const nlohmann::json& document, const std::string& source);
  static Qwen25VlConfig from_file(const std::filesystem::path& path);

  // Throws InvalidInputError naming `source` and the key when values are out of range or do
  // not fit together (heads, RoPE sections, vision output width versus the text width).
  void validate(const std::string& source) const;
};

// Parses an ACT2FN name; throws InvalidInputError naming `source` and `key` for other names.
Qwen25VlActivation parse_qwen25vl_activation(const std::string& name, const std::string& key,
                                             const std::string& source);

// Reads the JSON document of a configuration file; errors name `path` and `what` (for example
// "the text encoder configuration (config.json)").
nlohmann::json read_qwen25vl_json(const std::filesystem::path& path, const std::string& what);

}  // namespace ethereal
