#include "models/qwen2_5_vl/config.h"

#include <algorithm>
#include <fstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "models/qwen2_5_vl/json_fields.h"
#include "runtime/error.h"

namespace ethereal {

using qwen2_5_vl::JsonFields;
using qwen2_5_vl::require_json_object;

namespace {

constexpr const char* kConfigDescription = "a transformers Qwen2.5-VL config.json";

// The text keys of a config: "text_config.<key>" when the nested object has the key, else the
// top-level key.
class TextFields {
 public:
  TextFields(const nlohmann::json& document, const std::string& source)
      : top_(document, source),
        nested_(document.contains("text_config") ? document["text_config"] : empty_, source,
                "text_config.") {
    if (top_.has("text_config")) {
      require_json_object(document["text_config"], source,
                          "the \"text_config\" of " + std::string(kConfigDescription));
    }
  }

  const JsonFields& operator()(const std::string& key) const {
    return nested_.has(key) ? nested_ : top_;
  }
  // "text_config." when the key is read from the nested object.
  std::string prefix_of(const std::string& key) const {
    return nested_.has(key) ? "text_config." : "";
  }
  // Special token ids sit at the top level in both layouts, so the nested object is only a
  // fallback.
  const JsonFields& token_fields(const std::string& key) const {
    return top_.has(key) ? top_ : nested_;
  }

 private:
  inline static const nlohmann::json empty_ = nlohmann::json::object();
  JsonFields top_;
  JsonFields nested_;
};

struct RopeSettings {
  double theta = 1000000.0;
  std::vector<std::int64_t> mrope_section;
};

// Reads "rope_scaling" (transformers 4) or "rope_parameters" (transformers 5, which also moves
// rope_theta into it), whichever the file has. Both carry the M-RoPE section split.
RopeSettings read_rope(const TextFields& text, const std::string& source) {
  RopeSettings rope;
  rope.theta = text("rope_theta").number("rope_theta", rope.theta);
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    const JsonFields& owner = text(key);
    if (!owner.has(key)) {
      continue;
    }
    const nlohmann::json& object = owner.at(key);
    if (!object.is_object()) {
      owner.fail(key, fmt::format("must be an object, got {}", object.dump()));
    }
    JsonFields fields(object, source, text.prefix_of(key) + key + ".");
    const std::string type = fields.string("rope_type", fields.string("type", "default"));
    if (type != "mrope" && type != "default") {
      fields.fail(fields.has("rope_type") ? "rope_type" : "type",
                  fmt::format("is \"{}\", but Qwen2.5-VL uses multimodal RoPE (\"mrope\", or "
                              "\"default\" with an \"mrope_section\"); scaled RoPE variants "
                              "are not supported",
                              type));
    }
    rope.mrope_section = fields.integer_list("mrope_section", rope.mrope_section);
    rope.theta = fields.number("rope_theta", rope.theta);
  }
  if (rope.mrope_section.empty()) {
    throw InvalidInputError(fmt::format(
        "{}: no \"mrope_section\" in \"rope_scaling\" or \"rope_parameters\"; Qwen2.5-VL needs "
        "the split of the rotary frequencies over the t, h and w positions (for example "
        "[16, 24, 24])",
        source));
  }
  if (rope.mrope_section.size() != 3) {
    throw InvalidInputError(
        fmt::format("{}: \"mrope_section\" must hold 3 integers (t, h, w), got {}", source,
                    rope.mrope_section));
  }
  return rope;
}

Qwen25VlTextConfig read_text(const TextFields& text, const std::string& source) {
  Qwen25VlTextConfig config;
  config.hidden_size = text("hidden_size").integer("hidden_size");
  config.num_hidden_layers = text("num_hidden_layers").integer("num_hidden_layers");
  config.num_attention_heads = text("num_attention_heads").integer("num_attention_heads");
  config.num_key_value_heads = text("num_key_value_heads").integer("num_key_value_heads");
  config.intermediate_size = text("intermediate_size").integer("intermediate_size");
  config.vocab_size = text("vocab_size").integer("vocab_size");
  config.head_dim =
      config.num_attention_heads > 0 ? config.hidden_size / config.num_attention_heads : 0;
  config.head_dim = text("head_dim").integer("head_dim", config.head_dim);
  config.rms_norm_eps = text("rms_norm_eps").number("rms_norm_eps", config.rms_norm_eps);
  config.hidden_act = parse_qwen25vl_activation(text("hidden_act").string("hidden_act", "silu"),
                                                "hidden_act", source);

  const RopeSettings rope = read_rope(text, source);
  config.rope_theta = rope.theta;
  std::copy(rope.mrope_section.begin(), rope.mrope_section.end(), config.mrope_section.begin());

  if (text("use_sliding_window").boolean("use_sliding_window", false)) {
    throw InvalidInputError(fmt::format(
        "{}: \"use_sliding_window\": true is not supported; Qwen2.5-VL checkpoints attend over "
        "the whole prompt, so set it to false",
        source));
  }
  return config;
}

Qwen25VlVisionConfig read_vision(const nlohmann::json& document, const std::string& source) {
  JsonFields top(document, source);
  const nlohmann::json& object = top.at("vision_config");
  require_json_object(object, source,
                      "the \"vision_config\" of " + std::string(kConfigDescription));
  JsonFields fields(object, source, "vision_config.");

  Qwen25VlVisionConfig config;
  config.depth = fields.integer("depth");
  // Qwen2-VL named the width "embed_dim"; Qwen2.5-VL calls it "hidden_size".
  config.hidden_size = fields.has("hidden_size") || !fields.has("embed_dim")
                           ? fields.integer("hidden_size")
                           : fields.integer("embed_dim");
  config.intermediate_size = fields.integer("intermediate_size");
  config.num_heads = fields.integer("num_heads");
  config.out_hidden_size = fields.integer("out_hidden_size");
  // Published configs write "in_chans"; the transformers class takes "in_channels".
  config.in_channels =
      fields.integer("in_chans", fields.integer("in_channels", config.in_channels));
  config.patch_size = fields.integer("patch_size", config.patch_size);
  config.spatial_merge_size = fields.integer("spatial_merge_size", config.spatial_merge_size);
  config.temporal_patch_size = fields.integer("temporal_patch_size", config.temporal_patch_size);
  config.window_size = fields.integer("window_size", config.window_size);
  config.fullatt_block_indexes =
      fields.integer_list("fullatt_block_indexes", config.fullatt_block_indexes);
  config.hidden_act = parse_qwen25vl_activation(fields.string("hidden_act", "silu"),
                                                "vision_config.hidden_act", source);
  return config;
}

void require_positive(std::int64_t value, const std::string& key, const std::string& source) {
  if (value <= 0) {
    throw InvalidInputError(
        fmt::format("{}: key \"{}\" must be a positive integer, got {}", source, key, value));
  }
}

void require_token_id(std::int64_t id, const std::string& key, std::int64_t vocab_size,
                      bool optional, const std::string& source) {
  if ((optional && id == -1) || (id >= 0 && id < vocab_size)) {
    return;
  }
  throw InvalidInputError(fmt::format("{}: key \"{}\" is {}, outside the vocabulary of {} tokens",
                                      source, key, id, vocab_size));
}

}  // namespace

std::vector<std::int64_t> Qwen25VlVisionConfig::default_full_attention_blocks() {
  return {7, 15, 23, 31};
}

bool Qwen25VlVisionConfig::is_full_attention_block(std::int64_t block) const {
  return std::find(fullatt_block_indexes.begin(), fullatt_block_indexes.end(), block) !=
         fullatt_block_indexes.end();
}

Qwen25VlActivation parse_qwen25vl_activation(const std::string& name, const std::string& key,
                                             const std::string& source) {
  if (name == "silu" || name == "swish") {
    return Qwen25VlActivation::silu;
  }
  if (name == "gelu") {
    return Qwen25VlActivation::gelu;
  }
  if (name == "gelu_pytorch_tanh" || name == "gelu_new") {
    return Qwen25VlActivation::gelu_tanh;
  }
  throw InvalidInputError(
      fmt::format("{}: key \"{}\" is \"{}\", which is not supported; use \"silu\" (all Qwen2.5-VL "
                  "checkpoints), \"gelu\" or \"gelu_pytorch_tanh\"",
                  source, key, name));
}

Qwen25VlConfig Qwen25VlConfig::from_json(const nlohmann::json& document,
                                         const std::string& source) {
  require_json_object(document, source, kConfigDescription);
  JsonFields top(document, source);
  const std::string model_type = top.string("model_type", "qwen2_5_vl");
  if (model_type != "qwen2_5_vl") {
    top.fail("model_type", fmt::format("is \"{}\" but \"qwen2_5_vl\" was expected; other "
                                       "vision-language models have different vision towers",
                                       model_type));
  }

  const TextFields text(document, source);
  Qwen25VlConfig config;
  config.text = read_text(text, source);
  config.vision = read_vision(document, source);
  config.image_token_id = text.token_fields("image_token_id").integer("image_token_id");
  config.vision_start_token_id =
      text.token_fields("vision_start_token_id").integer("vision_start_token_id");
  config.video_token_id = text.token_fields("video_token_id").integer("video_token_id", -1);
  config.vision_end_token_id =
      text.token_fields("vision_end_token_id").integer("vision_end_token_id", -1);
  config.validate(source);
  return config;
}

Qwen25VlConfig Qwen25VlConfig::from_file(const std::filesystem::path& path) {
  return from_json(read_qwen25vl_json(path, "the text encoder configuration (config.json)"),
                   path.string());
}

void Qwen25VlConfig::validate(const std::string& source) const {
  require_positive(text.hidden_size, "hidden_size", source);
  require_positive(text.num_hidden_layers, "num_hidden_layers", source);
  require_positive(text.num_attention_heads, "num_attention_heads", source);
  require_positive(text.num_key_value_heads, "num_key_value_heads", source);
  require_positive(text.head_dim, "head_dim", source);
  require_positive(text.intermediate_size, "intermediate_size", source);
  require_positive(text.vocab_size, "vocab_size", source);
  if (text.num_attention_heads % text.num_key_value_heads != 0) {
    throw InvalidInputError(
        fmt::format("{}: num_attention_heads {} must be a multiple of num_key_value_heads {}",
                    source, text.num_attention_heads, text.num_key_value_heads));
  }
  if (!(text.rms_norm_eps > 0.0) || !(text.rope_theta > 0.0)) {
    throw InvalidInputError(
        fmt::format("{}: rms_norm_eps ({}) and rope_theta ({}) must be positive", source,
                    text.rms_norm_eps, text.rope_theta));
  }
  const std::int64_t sections =
      text.mrope_section[0] + text.mrope_section[1] + text.mrope_section[2];
  if (text.head_dim % 2 != 0 ||
      std::any_of(text.mrope_section.begin(), text.mrope_section.end(),
                  [](std::int64_t s) { return s < 0; }) ||
      2 * sections != text.head_dim) {
    throw InvalidInputError(fmt::format(
        "{}: \"mrope_section\" {} must hold non-negative counts that sum to head_dim / 2 = {} "
        "(head_dim {})",
        source, text.mrope_section, text.head_dim / 2, text.head_dim));
  }

  require_positive(vision.depth, "vision_config.depth", source);
  require_positive(vision.hidden_size, "vision_config.hidden_size", source);
  require_positive(vision.intermediate_size, "vision_config.intermediate_size", source);
  require_positive(vision.num_heads, "vision_config.num_heads", source);
  require_positive(vision.in_channels, "vision_config.in_chans", source);
  require_positive(vision.out_hidden_size, "vision_config.out_hidden_size", source);
  require_positive(vision.patch_size, "vision_config.patch_size", source);
  require_positive(vision.spatial_merge_size, "vision_config.spatial_merge_size", source);
  require_positive(vision.temporal_patch_size, "vision_config.temporal_patch_size", source);
  if (vision.hidden_size % vision.num_heads != 0 || vision.head_dim() % 4 != 0) {
    throw InvalidInputError(fmt::format(
        "{}: vision_config.hidden_size {} must split into num_heads {} heads whose size is a "
        "multiple of 4 (the 2-D RoPE rotates head_dim / 4 row and column frequencies)",
        source, vision.hidden_size, vision.num_heads));
  }
  if (vision.merged_window_size() < 1) {
    throw InvalidInputError(fmt::format(
        "{}: vision_config.window_size {} is smaller than one merged token ({} pixels = "
        "patch_size x spatial_merge_size)",
        source, vision.window_size, vision.patch_size * vision.spatial_merge_size));
  }
  for (std::int64_t block : vision.fullatt_block_indexes) {
    if (block < 0 || block >= vision.depth) {
      throw InvalidInputError(
          fmt::format("{}: vision_config.fullatt_block_indexes {} names block {}, but depth is {}",
                      source, vision.fullatt_block_indexes, block, vision.depth));
    }
  }
  if (vision.out_hidden_size != text.hidden_size) {
    throw InvalidInputError(fmt::format(
        "{}: vision_config.out_hidden_size {} must equal the language model's hidden_size {}, "
        "because image features replace token embeddings",
        source, vision.out_hidden_size, text.hidden_size));
  }

  require_token_id(image_token_id, "image_token_id", text.vocab_size, false, source);
  require_token_id(vision_start_token_id, "vision_start_token_id", text.vocab_size, false, source);
  require_token_id(video_token_id, "video_token_id", text.vocab_size, true, source);
  require_token_id(vision_end_token_id, "vision_end_token_id", text.vocab_size, true, source);
}

nlohmann::json read_qwen25vl_json(const std::filesystem::path& path, const std::string& what) {
  std::ifstream in(path);
  if (!in) {
    throw InvalidInputError(fmt::format("{}: cannot open {}", path.string(), what));
  }
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& error) {
    throw InvalidInputError(fmt::format("{}: invalid JSON in {} at byte {}: {}", path.string(),
                                        what, error.byte, error.what()));
  }
}

}  // namespace ethereal
