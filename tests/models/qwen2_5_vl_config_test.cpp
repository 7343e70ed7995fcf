// Configuration parsing and tensor-name mapping of the Qwen2.5-VL text encoder.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io/safetensors_checkpoint.h"
#include "io/safetensors_writer.h"
#include "models/qwen2_5_vl/config.h"
#include "models/qwen2_5_vl/image_processor.h"
#include "models/qwen2_5_vl/tensor_names.h"
#include "qwen2_5_vl_test_support.h"
#include "support/errors.h"
#include "support/files.h"

namespace ethereal {
namespace {

using qwen2_5_vl_test::tiny_text_encoder_dir;
using test_support::error_message;
using test_support::TemporaryDirectory;

nlohmann::json tiny_json() {
  return read_qwen25vl_json(tiny_text_encoder_dir() / "config.json", "test config");
}

// The text keys of the tiny config moved under "text_config", as newer transformers write
// config.json, with a "default" RoPE type and "in_channels" in the vision config.
nlohmann::json nested_tiny_json() {
  nlohmann::json legacy = tiny_json();
  nlohmann::json text;
  for (const char* key : {"hidden_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "intermediate_size", "rms_norm_eps", "rope_theta",
                          "vocab_size", "hidden_act", "use_sliding_window"}) {
    text[key] = legacy[key];
    legacy.erase(key);
  }
  text["rope_scaling"] = {{"rope_type", "default"},
                          {"type", "default"},
                          {"mrope_section", legacy["rope_scaling"]["mrope_section"]}};
  legacy.erase("rope_scaling");
  legacy["text_config"] = text;
  legacy["vision_config"]["in_channels"] = 3;
  legacy["vision_config"].erase("in_chans");
  return legacy;
}

void expect_tiny_values(const Qwen25VlConfig& config) {
  EXPECT_EQ(config.text.hidden_size, 32);
  EXPECT_EQ(config.text.num_hidden_layers, 2);
  EXPECT_EQ(config.text.num_attention_heads, 4);
  EXPECT_EQ(config.text.num_key_value_heads, 2);
  EXPECT_EQ(config.text.head_dim, 8);
  EXPECT_EQ(config.text.intermediate_size, 48);
  EXPECT_EQ(config.text.vocab_size, 640);
  EXPECT_DOUBLE_EQ(config.text.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(config.text.rope_theta, 1e6);
  EXPECT_EQ(config.text.mrope_section, (std::array<std::int64_t, 3>{1, 1, 2}));
  EXPECT_EQ(config.text.hidden_act, Qwen25VlActivation::silu);
  EXPECT_EQ(config.vision.depth, 4);
  EXPECT_EQ(config.vision.hidden_size, 32);
  EXPECT_EQ(config.vision.num_heads, 2);
  EXPECT_EQ(config.vision.head_dim(), 16);
  EXPECT_EQ(config.vision.intermediate_size, 48);
  EXPECT_EQ(config.vision.in_channels, 3);
  EXPECT_EQ(config.vision.out_hidden_size, 32);
  EXPECT_EQ(config.vision.window_size, 56);
  EXPECT_EQ(config.vision.merged_window_size(), 2);
  EXPECT_EQ(config.vision.patch_values(), 1176);
  EXPECT_EQ(config.vision.fullatt_block_indexes, (std::vector<std::int64_t>{1, 3}));
  EXPECT_TRUE(config.vision.is_full_attention_block(3));
  EXPECT_FALSE(config.vision.is_full_attention_block(2));
  EXPECT_EQ(config.image_token_id, 630);
  EXPECT_EQ(config.video_token_id, 631);
  EXPECT_EQ(config.vision_start_token_id, 627);
  EXPECT_EQ(config.vision_end_token_id, 628);
}

TEST(Qwen25VlConfigTest, ReadsTinyLegacyLayout) {
  expect_tiny_values(Qwen25VlConfig::from_file(tiny_text_encoder_dir() / "config.json"));
}

TEST(Qwen25VlConfigTest, ReadsNestedTextConfig) {
  expect_tiny_values(Qwen25VlConfig::from_json(nested_tiny_json(), "nested.json"));
}

TEST(Qwen25VlConfigTest, ReadsRopeParameters) {
  nlohmann::json document = tiny_json();
  document.erase("rope_scaling");
  document.erase("rope_theta");
  document["rope_parameters"] = {
      {"rope_type", "default"}, {"rope_theta", 500000.0}, {"mrope_section", {2, 1, 1}}};
  const Qwen25VlConfig config = Qwen25VlConfig::from_json(document, "v5.json");
  EXPECT_DOUBLE_EQ(config.text.rope_theta, 500000.0);
  EXPECT_EQ(config.text.mrope_section, (std::array<std::int64_t, 3>{2, 1, 1}));
}

TEST(Qwen25VlConfigTest, PublishedSevenBValuesEqualDefaults) {
  // The keys of the published Qwen2.5-VL-7B-Instruct config.json that the engine reads.
  const nlohmann::json document = nlohmann::json::parse(R"({
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
    "hidden_act": "silu", "hidden_size": 3584, "intermediate_size": 18944,
    "max_position_embeddings": 128000, "num_attention_heads": 28, "num_hidden_layers": 28,
    "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 32768, "use_sliding_window": false, "tie_word_embeddings": false,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
    "image_token_id": 151655, "video_token_id": 151656, "vocab_size": 152064,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280,
      "intermediate_size": 3420, "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584,
      "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
      "temporal_patch_size": 2}
  })");
  const Qwen25VlConfig config = Qwen25VlConfig::from_json(document, "7b.json");
  const Qwen25VlConfig defaults;
  EXPECT_EQ(config.text.hidden_size, defaults.text.hidden_size);
  EXPECT_EQ(config.text.num_hidden_layers, defaults.text.num_hidden_layers);
  EXPECT_EQ(config.text.num_attention_heads, defaults.text.num_attention_heads);
  EXPECT_EQ(config.text.num_key_value_heads, defaults.text.num_key_value_heads);
  EXPECT_EQ(config.text.head_dim, 128);
  EXPECT_EQ(config.text.intermediate_size, defaults.text.intermediate_size);
  EXPECT_EQ(config.text.vocab_size, defaults.text.vocab_size);
  EXPECT_EQ(config.text.mrope_section, defaults.text.mrope_section);

  EXPECT_EQ(config.vision.depth, defaults.vision.depth);
  EXPECT_EQ(config.vision.hidden_size, defaults.vision.hidden_size);
  EXPECT_EQ(config.vision.head_dim(), 80);
  EXPECT_EQ(config.vision.intermediate_size, defaults.vision.intermediate_size);
  EXPECT_EQ(config.vision.merged_window_size(), 4);
  EXPECT_EQ(config.vision.fullatt_block_indexes, defaults.vision.fullatt_block_indexes);

  EXPECT_EQ(config.image_token_id, defaults.image_token_id);
  EXPECT_EQ(config.vision_start_token_id, defaults.vision_start_token_id);
}

struct ConfigErrorCase {
  const char* name;
  std::function<void(nlohmann::json&)> edit;
  std::vector<std::string> expected_fragments;
};

TEST(Qwen25VlConfigTest, RejectsInvalidConfigs) {
  const std::vector<ConfigErrorCase> cases = {
      {"missing hidden_size",
       [](nlohmann::json& d) { d.erase("hidden_size"); },
       {"bad.json", "\"hidden_size\"", "missing"}},
      {"string hidden_size",
       [](nlohmann::json& d) { d["hidden_size"] = "32"; },
       {"\"hidden_size\"", "must be an integer", "\"32\""}},
      {"mrope sum",
       [](nlohmann::json& d) {
         d["rope_scaling"]["mrope_section"] = {1, 1, 1};
       },
       {"mrope_section", "[1, 1, 1]", "head_dim / 2 = 4"}},
      {"mrope length",
       [](nlohmann::json& d) {
         d["rope_scaling"]["mrope_section"] = {2, 2};
       },
       {"mrope_section", "3 integers"}},
      {"no mrope", [](nlohmann::json& d) { d.erase("rope_scaling"); }, {"no \"mrope_section\""}},
      {"yarn",
       [](nlohmann::json& d) { d["rope_scaling"]["type"] = "yarn"; },
       {"\"rope_scaling.type\"", "\"yarn\""}},
      {"sliding window",
       [](nlohmann::json& d) { d["use_sliding_window"] = true; },
       {"use_sliding_window"}},
      {"model type",
       [](nlohmann::json& d) { d["model_type"] = "qwen2_vl"; },
       {"\"model_type\"", "\"qwen2_vl\""}},
      {"kv heads",
       [](nlohmann::json& d) { d["num_key_value_heads"] = 3; },
       {"num_attention_heads 4", "num_key_value_heads 3"}},
      {"out width",
       [](nlohmann::json& d) { d["vision_config"]["out_hidden_size"] = 64; },
       {"out_hidden_size 64", "hidden_size 32"}},
      {"full block",
       [](nlohmann::json& d) { d["vision_config"]["fullatt_block_indexes"] = {4}; },
       {"fullatt_block_indexes", "block 4", "depth is 4"}},
      {"vision heads",
       [](nlohmann::json& d) { d["vision_config"]["num_heads"] = 3; },
       {"vision_config.hidden_size 32", "num_heads 3"}},
      {"missing vision",
       [](nlohmann::json& d) { d.erase("vision_config"); },
       {"\"vision_config\"", "missing"}},
      {"missing depth",
       [](nlohmann::json& d) { d["vision_config"].erase("depth"); },
       {"\"vision_config.depth\"", "missing"}},
      {"image token",
       [](nlohmann::json& d) { d["image_token_id"] = 640; },
       {"image_token_id", "640", "vocabulary of 640"}},
      {"activation",
       [](nlohmann::json& d) { d["vision_config"]["hidden_act"] = "relu"; },
       {"vision_config.hidden_act", "\"relu\""}},
      {"window",
       [](nlohmann::json& d) { d["vision_config"]["window_size"] = 20; },
       {"window_size 20", "28 pixels"}},
  };
  for (const ConfigErrorCase& test_case : cases) {
    SCOPED_TRACE(test_case.name);
    nlohmann::json document = tiny_json();
    test_case.edit(document);
    const std::string message =
        error_message([&] { Qwen25VlConfig::from_json(document, "bad.json"); });
    ASSERT_FALSE(message.empty()) << "no error";
    for (const std::string& fragment : test_case.expected_fragments) {
      EXPECT_NE(message.find(fragment), std::string::npos) << message;
    }
  }
}

TEST(Qwen25VlConfigTest, NestedErrorsNameTextConfigKey) {
  nlohmann::json document = nested_tiny_json();
  document["text_config"]["num_hidden_layers"] = 2.5;
  const std::string message =
      error_message([&] { Qwen25VlConfig::from_json(document, "nested.json"); });
  EXPECT_NE(message.find("\"text_config.num_hidden_layers\" must be an integer"), std::string::npos)
      << message;
}

TEST(Qwen25VlConfigTest, RejectsUnreadableFiles) {
  TemporaryDirectory directory;
  EXPECT_NE(error_message([&] {
              Qwen25VlConfig::from_file(directory / "absent.json");
            }).find("cannot open"),
            std::string::npos);
  std::ofstream(directory / "broken.json") << "{\"hidden_size\": ";
  const std::string message =
      error_message([&] { Qwen25VlConfig::from_file(directory / "broken.json"); });
  EXPECT_NE(message.find("broken.json"), std::string::npos) << message;
  EXPECT_NE(message.find("invalid JSON"), std::string::npos) << message;
}

TEST(Qwen2VlImageProcessorConfigTest, DefaultsAreQwenImageValues) {
  const Qwen2VlImageProcessorConfig config;
  EXPECT_EQ(config.min_pixels, 3136);
  EXPECT_EQ(config.max_pixels, 12845056);
  EXPECT_EQ(config.factor(), 28);
  EXPECT_FLOAT_EQ(config.image_mean[0], 0.48145466f);
  EXPECT_FLOAT_EQ(config.image_std[2], 0.27577711f);
  EXPECT_EQ(config.resample, ResampleFilter::kBicubic);
}

TEST(Qwen2VlImageProcessorConfigTest, ReadsKeysAndSizeObject) {
  const nlohmann::json document = nlohmann::json::parse(R"({
    "size": {"shortest_edge": 1000, "longest_edge": 20000}, "max_pixels": 30000,
    "patch_size": 16, "merge_size": 2, "temporal_patch_size": 2, "resample": 2,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 1.0], "do_normalize": false,
    "image_processor_type": "Qwen2VLImageProcessor"
  })");
  const Qwen2VlImageProcessorConfig config =
      Qwen2VlImageProcessorConfig::from_json(document, "preprocessor_config.json");
  EXPECT_EQ(config.min_pixels, 1000);
  EXPECT_EQ(config.max_pixels, 30000) << "max_pixels overrides size.longest_edge";
  EXPECT_EQ(config.factor(), 32);
  EXPECT_EQ(config.resample, ResampleFilter::kBilinear);
  EXPECT_FLOAT_EQ(config.image_std[1], 0.5f);
  EXPECT_FALSE(config.do_normalize);
}

TEST(Qwen2VlImageProcessorConfigTest, RejectsInvalidValues) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"resample": 0})", "\"resample\" is 0"},
      {R"({"image_mean": [0.5, 0.5]})", "\"image_mean\" must hold 3 values"},
      {R"({"image_std": [0.5, 0.0, 0.5]})", "\"image_std\" must not contain 0"},
      {R"({"min_pixels": 5000, "max_pixels": 4000})", "\"min_pixels\" (5000) must not exceed"},
      {R"({"patch_size": 0})", "\"patch_size\" must be a positive integer"},
      {R"([1, 2])", "expected a JSON object"},
  };
  for (const auto& [text, fragment] : cases) {
    SCOPED_TRACE(text);
    const std::string message = error_message(
        [&] { Qwen2VlImageProcessorConfig::from_json(nlohmann::json::parse(text), "p.json"); });
    EXPECT_NE(message.find(fragment), std::string::npos) << message;
    EXPECT_NE(message.find("p.json"), std::string::npos) << message;
  }
}

TEST(Qwen25VlTensorNamesTest, LegacyNamesAreCanonical) {
  EXPECT_EQ(qwen25vl_legacy_tensor_name("model.layers.3.mlp.up_proj.weight"),
            "model.layers.3.mlp.up_proj.weight");
  EXPECT_EQ(qwen25vl_legacy_tensor_name("visual.merger.mlp.0.bias"), "visual.merger.mlp.0.bias");
  EXPECT_EQ(qwen25vl_legacy_tensor_name("lm_head.weight"), std::nullopt);
}

TEST(Qwen25VlTensorNamesTest, NestedNamesMapToLegacy) {
  EXPECT_EQ(qwen25vl_nested_tensor_name("model.language_model.layers.0.self_attn.q_proj.bias"),
            "model.layers.0.self_attn.q_proj.bias");
  EXPECT_EQ(qwen25vl_nested_tensor_name("model.language_model.embed_tokens.weight"),
            "model.embed_tokens.weight");
  EXPECT_EQ(qwen25vl_nested_tensor_name("model.language_model.norm.weight"), "model.norm.weight");
  EXPECT_EQ(qwen25vl_nested_tensor_name("model.visual.blocks.7.attn.qkv.weight"),
            "visual.blocks.7.attn.qkv.weight");
  EXPECT_EQ(qwen25vl_nested_tensor_name("model.visual.patch_embed.proj.weight"),
            "visual.patch_embed.proj.weight");
  EXPECT_EQ(qwen25vl_nested_tensor_name("lm_head.weight"), std::nullopt);
}

SafetensorsCheckpoint write_names(const TemporaryDirectory& directory,
                                  const std::vector<std::string>& names) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : names) {
    tensors.emplace_back(name, Tensor::zeros({2}, DType::f32));
  }
  write_safetensors(directory / "model.safetensors", tensors);
  return SafetensorsCheckpoint::open(directory / "model.safetensors");
}

TEST(Qwen25VlTensorNamesTest, DetectsLayoutFromNames) {
  {
    TemporaryDirectory directory;
    const SafetensorsCheckpoint checkpoint = write_names(
        directory, {"model.norm.weight", "visual.merger.ln_q.weight", "lm_head.weight"});
    EXPECT_EQ(detect_qwen25vl_layout(checkpoint), Qwen25VlTensorLayout::legacy);
  }
  {
    TemporaryDirectory directory;
    const SafetensorsCheckpoint checkpoint = write_names(
        directory, {"model.language_model.norm.weight", "model.visual.merger.ln_q.weight"});
    EXPECT_EQ(detect_qwen25vl_layout(checkpoint), Qwen25VlTensorLayout::nested);
  }
  {
    TemporaryDirectory directory;
    const SafetensorsCheckpoint checkpoint =
        write_names(directory, {"model.language_model.norm.weight", "visual.merger.ln_q.weight"});
    const std::string message = error_message([&] { detect_qwen25vl_layout(checkpoint); });
    EXPECT_NE(message.find("mixes two Qwen2.5-VL naming layouts"), std::string::npos) << message;
    EXPECT_NE(message.find("model.language_model.norm.weight"), std::string::npos) << message;
    EXPECT_NE(message.find("visual.merger.ln_q.weight"), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace ethereal
