#include "models/tiny_model.h"

#include <cmath>
#include <cstdlib>
#include <random>

#include <fmt/format.h>

#include "io/safetensors_writer.h"
#include "models/model_directory_writer.h"
#include "runtime/error.h"

namespace ethereal {

namespace fs = std::filesystem;

namespace {

void add_linear(std::vector<TensorSpec>& specs, const std::string& prefix, std::int64_t out,
                std::int64_t in, bool bias) {
  specs.push_back({prefix + ".weight", {out, in}});
  if (bias) {
    specs.push_back({prefix + ".bias", {out}});
  }
}

// A VAE residual block: RMS norms with gamma [C, 1, 1, 1], causal 3x3x3 convolutions and a
// 1x1x1 shortcut when the channel count changes.
void add_vae_resnet(std::vector<TensorSpec>& specs, const std::string& prefix, std::int64_t in,
                    std::int64_t out) {
  specs.push_back({prefix + ".norm1.gamma", {in, 1, 1, 1}});
  specs.push_back({prefix + ".conv1.weight", {out, in, 3, 3, 3}});
  specs.push_back({prefix + ".conv1.bias", {out}});
  specs.push_back({prefix + ".norm2.gamma", {out, 1, 1, 1}});
  specs.push_back({prefix + ".conv2.weight", {out, out, 3, 3, 3}});
  specs.push_back({prefix + ".conv2.bias", {out}});
  if (in != out) {
    specs.push_back({prefix + ".conv_shortcut.weight", {out, in, 1, 1, 1}});
    specs.push_back({prefix + ".conv_shortcut.bias", {out}});
  }
}

void add_vae_mid_block(std::vector<TensorSpec>& specs, const std::string& prefix,
                       std::int64_t channels) {
  add_vae_resnet(specs, prefix + ".resnets.0", channels, channels);
  specs.push_back({prefix + ".attentions.0.norm.gamma", {channels, 1, 1}});
  specs.push_back({prefix + ".attentions.0.to_qkv.weight", {3 * channels, channels, 1, 1}});
  specs.push_back({prefix + ".attentions.0.to_qkv.bias", {3 * channels}});
  specs.push_back({prefix + ".attentions.0.proj.weight", {channels, channels, 1, 1}});
  specs.push_back({prefix + ".attentions.0.proj.bias", {channels}});
  add_vae_resnet(specs, prefix + ".resnets.1", channels, channels);
}

// Seeded bf16 weights: norm scales are 1, biases small, other tensors scaled by 1/sqrt(fan_in)
// so activations keep roughly unit size through the layers.
Tensor seeded_tensor(const TensorSpec& spec, std::mt19937_64& generator) {
  const bool is_norm = spec.name.find("norm") != std::string::npos ||
                       spec.name.ends_with(".gamma") || spec.name.find("ln_q") != std::string::npos;
  std::vector<float> values(static_cast<std::size_t>(shape_numel(spec.shape)));
  if (is_norm && !spec.name.ends_with(".bias") &&
      spec.name.find("norm_out.linear") == std::string::npos) {
    std::fill(values.begin(), values.end(), 1.0f);
  } else {
    std::int64_t fan_in = 1;
    for (std::size_t i = 1; i < spec.shape.size(); ++i) {
      fan_in *= spec.shape[i];
    }
    const bool is_bias = spec.shape.size() == 1;
    const double scale = is_bias ? 0.02 : 1.0 / std::sqrt(static_cast<double>(fan_in));
    std::normal_distribution<double> normal(0.0, 1.0);
    for (float& v : values) {
      v = static_cast<float>(scale * normal(generator));
    }
  }
  return Tensor::from_floats(values, spec.shape, DType::bf16);
}

void write_weights(const fs::path& path, const std::vector<TensorSpec>& specs,
                   std::mt19937_64& generator) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const TensorSpec& spec : specs) {
    tensors.emplace_back(spec.name, seeded_tensor(spec, generator));
  }
  write_safetensors(path, tensors, {{"format", "pt"}});
}

nlohmann::json transformer_config(std::int64_t joint_dim) {
  return {{"_class_name", "QwenImageTransformer2DModel"},
          {"patch_size", 2},
          {"in_channels", 64},
          {"out_channels", 16},
          {"num_layers", 3},
          {"attention_head_dim", 16},
          {"num_attention_heads", 2},
          {"joint_attention_dim", joint_dim},
          {"guidance_embeds", false},
          {"axes_dims_rope", {4, 6, 6}},
          {"zero_cond_t", true}};
}

nlohmann::json vae_config() {
  return {{"_class_name", "AutoencoderKLQwenImage"},
          {"base_dim", 8},
          {"z_dim", 16},
          {"dim_mult", {1, 2, 4, 4}},
          {"num_res_blocks", 1},
          {"attn_scales", nlohmann::json::array()},
          {"temperal_downsample", {false, true, true}},
          {"dropout", 0.0},
          {"input_channels", 3},
          {"latents_mean",
           {-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715,
            0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921}},
          {"latents_std",
           {2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652,
            1.5579, 1.6382, 1.1253, 2.8251, 1.9160}}};
}

nlohmann::json text_encoder_config(std::int64_t vocab_size, std::int32_t image_pad,
                                   std::int32_t video_pad, std::int32_t vision_start,
                                   std::int32_t vision_end) {
  return {{"architectures", {"Qwen2_5_VLForConditionalGeneration"}},
          {"model_type", "qwen2_5_vl"},
          {"hidden_size", 32},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"intermediate_size", 64},
          {"rms_norm_eps", 1e-6},
          {"rope_theta", 1000000.0},
          {"rope_scaling", {{"type", "mrope"}, {"mrope_section", {1, 1, 2}}}},
          {"vocab_size", vocab_size},
          {"image_token_id", image_pad},
          {"video_token_id", video_pad},
          {"vision_start_token_id", vision_start},
          {"vision_end_token_id", vision_end},
          {"tie_word_embeddings", false},
          {"vision_config",
           {{"depth", 4},
            {"hidden_size", 32},
            {"intermediate_size", 64},
            {"num_heads", 2},
            {"in_chans", 3},
            {"out_hidden_size", 32},
            {"patch_size", 14},
            {"spatial_merge_size", 2},
            {"temporal_patch_size", 2},
            {"window_size", 56},
            {"fullatt_block_indexes", {1, 3}},
            {"hidden_act", "silu"}}}};
}

nlohmann::json scheduler_config() {
  return {{"_class_name", "FlowMatchEulerDiscreteScheduler"},
          {"num_train_timesteps", 1000},
          {"shift", 1.0},
          {"use_dynamic_shifting", true},
          {"base_shift", 0.5},
          {"max_shift", 0.9},
          {"base_image_seq_len", 256},
          {"max_image_seq_len", 8192},
          {"time_shift_type", "exponential"},
          {"shift_terminal", 0.02},
          {"invert_sigmas", false},
          {"stochastic_sampling", false},
          {"use_karras_sigmas", false},
          {"use_exponential_sigmas", false},
          {"use_beta_sigmas", false}};
}

nlohmann::json processor_config() {
  return {{"image_processor_type", "Qwen2VLImageProcessor"},
          {"image_mean", {0.48145466, 0.4578275, 0.40821073}},
          {"image_std", {0.26862954, 0.26130258, 0.27577711}},
          {"min_pixels", 3136},
          {"max_pixels", 12845056},
          {"patch_size", 14},
          {"merge_size", 2},
          {"temporal_patch_size", 2}};
}

std::int32_t added_token_id(const BpeVocabulary& vocabulary, std::string_view content) {
  for (const AddedToken& token : vocabulary.added_tokens) {
    if (token.content == content) {
      return token.id;
    }
  }
  throw Error(fmt::format("tiny vocabulary has no token {}", content));
}

}  // namespace

std::vector<TensorSpec> transformer_tensor_specs(const nlohmann::json& config) {
  const std::int64_t heads = config.at("num_attention_heads");
  const std::int64_t head_dim = config.at("attention_head_dim");
  const std::int64_t dim = heads * head_dim;
  const std::int64_t joint = config.at("joint_attention_dim");
  const std::int64_t in = config.at("in_channels");
  const std::int64_t patch = config.at("patch_size");
  const std::int64_t out = config.at("out_channels");
  const std::int64_t layers = config.at("num_layers");

  std::vector<TensorSpec> specs;
  add_linear(specs, "img_in", dim, in, true);
  specs.push_back({"txt_norm.weight", {joint}});
  add_linear(specs, "txt_in", dim, joint, true);
  add_linear(specs, "time_text_embed.timestep_embedder.linear_1", dim, 256, true);
  add_linear(specs, "time_text_embed.timestep_embedder.linear_2", dim, dim, true);
  for (std::int64_t layer = 0; layer < layers; ++layer) {
    const std::string block = fmt::format("transformer_blocks.{}.", layer);
    add_linear(specs, block + "img_mod.1", 6 * dim, dim, true);
    add_linear(specs, block + "txt_mod.1", 6 * dim, dim, true);
    for (const char* name : {"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj",
                             "to_out.0", "to_add_out"}) {
      add_linear(specs, block + "attn." + name, dim, dim, true);
    }
    for (const char* name : {"norm_q", "norm_k", "norm_added_q", "norm_added_k"}) {
      specs.push_back({block + "attn." + name + ".weight", {head_dim}});
    }
    for (const char* stream : {"img_mlp", "txt_mlp"}) {
      add_linear(specs, block + stream + ".net.0.proj", 4 * dim, dim, true);
      add_linear(specs, block + stream + ".net.2", dim, 4 * dim, true);
    }
  }
  add_linear(specs, "norm_out.linear", 2 * dim, dim, true);
  add_linear(specs, "proj_out", patch * patch * out, dim, true);
  return specs;
}

std::vector<TensorSpec> vae_tensor_specs(const nlohmann::json& config) {
  const std::int64_t base = config.at("base_dim");
  const std::int64_t z_dim = config.at("z_dim");
  const std::vector<std::int64_t> mult = config.at("dim_mult");
  const std::int64_t res_blocks = config.at("num_res_blocks");
  const std::vector<bool> temporal_down = config.at("temperal_downsample");
  const std::int64_t channels = config.value("input_channels", 3);
  const std::size_t stages = mult.size();

  std::vector<TensorSpec> specs;
  // Encoder: dims = [base, base*m0, base*m1, ...]; stage i maps dims[i] -> dims[i+1].
  std::vector<std::int64_t> dims = {base};
  for (std::int64_t m : mult) {
    dims.push_back(base * m);
  }
  specs.push_back({"encoder.conv_in.weight", {base, channels, 3, 3, 3}});
  specs.push_back({"encoder.conv_in.bias", {base}});
  int index = 0;
  for (std::size_t stage = 0; stage < stages; ++stage) {
    std::int64_t in = dims[stage];
    const std::int64_t out = dims[stage + 1];
    for (std::int64_t r = 0; r < res_blocks; ++r) {
      add_vae_resnet(specs, fmt::format("encoder.down_blocks.{}", index++), in, out);
      in = out;
    }
    if (stage + 1 < stages) {
      const std::string prefix = fmt::format("encoder.down_blocks.{}", index++);
      specs.push_back({prefix + ".resample.1.weight", {out, out, 3, 3}});
      specs.push_back({prefix + ".resample.1.bias", {out}});
      if (temporal_down[stage]) {
        specs.push_back({prefix + ".time_conv.weight", {out, out, 3, 1, 1}});
        specs.push_back({prefix + ".time_conv.bias", {out}});
      }
    }
  }
  const std::int64_t top = dims.back();
  add_vae_mid_block(specs, "encoder.mid_block", top);
  specs.push_back({"encoder.norm_out.gamma", {top, 1, 1, 1}});
  specs.push_back({"encoder.conv_out.weight", {2 * z_dim, top, 3, 3, 3}});
  specs.push_back({"encoder.conv_out.bias", {2 * z_dim}});
  specs.push_back({"quant_conv.weight", {2 * z_dim, 2 * z_dim, 1, 1, 1}});
  specs.push_back({"quant_conv.bias", {2 * z_dim}});

  // Decoder: dims = [base*m_last, base*m_last, ..., base*m0]; stages after the first start
  // from half the previous width because each upsampler halves the channels.
  specs.push_back({"post_quant_conv.weight", {z_dim, z_dim, 1, 1, 1}});
  specs.push_back({"post_quant_conv.bias", {z_dim}});
  std::vector<std::int64_t> up_dims = {base * mult.back()};
  for (auto it = mult.rbegin(); it != mult.rend(); ++it) {
    up_dims.push_back(base * *it);
  }
  specs.push_back({"decoder.conv_in.weight", {up_dims[0], z_dim, 3, 3, 3}});
  specs.push_back({"decoder.conv_in.bias", {up_dims[0]}});
  add_vae_mid_block(specs, "decoder.mid_block", up_dims[0]);
  for (std::size_t stage = 0; stage < stages; ++stage) {
    std::int64_t in = stage == 0 ? up_dims[0] : up_dims[stage] / 2;
    const std::int64_t out = up_dims[stage + 1];
    for (std::int64_t r = 0; r < res_blocks + 1; ++r) {
      add_vae_resnet(specs, fmt::format("decoder.up_blocks.{}.resnets.{}", stage, r), in, out);
      in = out;
    }
    if (stage + 1 < stages) {
      const std::string prefix = fmt::format("decoder.up_blocks.{}.upsamplers.0", stage);
      specs.push_back({prefix + ".resample.1.weight", {out / 2, out, 3, 3}});
      specs.push_back({prefix + ".resample.1.bias", {out / 2}});
      // The decoder upsamples in time where the encoder downsampled, in reverse order.
      if (temporal_down[stages - 2 - stage]) {
        specs.push_back({prefix + ".time_conv.weight", {2 * out, out, 3, 1, 1}});
        specs.push_back({prefix + ".time_conv.bias", {2 * out}});
      }
    }
  }
  specs.push_back({"decoder.norm_out.gamma", {up_dims.back(), 1, 1, 1}});
  specs.push_back({"decoder.conv_out.weight", {channels, up_dims.back(), 3, 3, 3}});
  specs.push_back({"decoder.conv_out.bias", {channels}});
  return specs;
}

std::vector<TensorSpec> text_encoder_tensor_specs(const nlohmann::json& config) {
  const std::int64_t hidden = config.at("hidden_size");
  const std::int64_t heads = config.at("num_attention_heads");
  const std::int64_t kv_heads = config.at("num_key_value_heads");
  const std::int64_t head_dim = hidden / heads;
  const std::int64_t intermediate = config.at("intermediate_size");
  const std::int64_t vocab = config.at("vocab_size");
  const std::int64_t layers = config.at("num_hidden_layers");
  const nlohmann::json& vision = config.at("vision_config");
  const std::int64_t v_hidden = vision.at("hidden_size");
  const std::int64_t v_inter = vision.at("intermediate_size");
  const std::int64_t v_out = vision.at("out_hidden_size");
  const std::int64_t patch = vision.at("patch_size");
  const std::int64_t temporal = vision.at("temporal_patch_size");
  const std::int64_t merge = vision.at("spatial_merge_size");
  const std::int64_t depth = vision.at("depth");

  std::vector<TensorSpec> specs;
  specs.push_back({"model.embed_tokens.weight", {vocab, hidden}});
  for (std::int64_t layer = 0; layer < layers; ++layer) {
    const std::string p = fmt::format("model.layers.{}.", layer);
    add_linear(specs, p + "self_attn.q_proj", hidden, hidden, true);
    add_linear(specs, p + "self_attn.k_proj", kv_heads * head_dim, hidden, true);
    add_linear(specs, p + "self_attn.v_proj", kv_heads * head_dim, hidden, true);
    add_linear(specs, p + "self_attn.o_proj", hidden, hidden, false);
    add_linear(specs, p + "mlp.gate_proj", intermediate, hidden, false);
    add_linear(specs, p + "mlp.up_proj", intermediate, hidden, false);
    add_linear(specs, p + "mlp.down_proj", hidden, intermediate, false);
    specs.push_back({p + "input_layernorm.weight", {hidden}});
    specs.push_back({p + "post_attention_layernorm.weight", {hidden}});
  }
  specs.push_back({"model.norm.weight", {hidden}});

  specs.push_back({"visual.patch_embed.proj.weight", {v_hidden, 3, temporal, patch, patch}});
  for (std::int64_t block = 0; block < depth; ++block) {
    const std::string p = fmt::format("visual.blocks.{}.", block);
    specs.push_back({p + "norm1.weight", {v_hidden}});
    specs.push_back({p + "norm2.weight", {v_hidden}});
    add_linear(specs, p + "attn.qkv", 3 * v_hidden, v_hidden, true);
    add_linear(specs, p + "attn.proj", v_hidden, v_hidden, true);
    add_linear(specs, p + "mlp.gate_proj", v_inter, v_hidden, true);
    add_linear(specs, p + "mlp.up_proj", v_inter, v_hidden, true);
    add_linear(specs, p + "mlp.down_proj", v_hidden, v_inter, true);
  }
  const std::int64_t merged = v_hidden * merge * merge;
  specs.push_back({"visual.merger.ln_q.weight", {v_hidden}});
  add_linear(specs, "visual.merger.mlp.0", merged, merged, true);
  add_linear(specs, "visual.merger.mlp.2", v_out, merged, true);
  return specs;
}

void write_tiny_model(const fs::path& directory, std::uint64_t seed) {
  ModelDirectoryFiles files;
  // 256 byte symbols + 362 merges, then the 22 added tokens of Qwen2.5-VL.
  files.vocabulary = generated_model_vocabulary(std::nullopt);
  const BpeVocabulary& vocabulary = files.vocabulary;
  const std::int64_t vocab_size = (vocabulary.added_tokens.back().id + 1 + 63) / 64 * 64;
  files.text_encoder_config = text_encoder_config(
      vocab_size, added_token_id(vocabulary, "<|image_pad|>"),
      added_token_id(vocabulary, "<|video_pad|>"), added_token_id(vocabulary, "<|vision_start|>"),
      added_token_id(vocabulary, "<|vision_end|>"));
  files.transformer_config = transformer_config(files.text_encoder_config.at("hidden_size"));
  files.vae_config = vae_config();
  files.scheduler_config = scheduler_config();
  files.processor_config = processor_config();
  files.model_index = {{"_class_name", "QwenImageEditPlusPipeline"},
                       {"_name_or_path", "ethereal/tiny-qwen-image-edit"},
                       {"ethereal_tiny_model_version", kTinyModelVersion},
                       {"processor", {"transformers", "Qwen2VLProcessor"}},
                       {"scheduler", {"diffusers", "FlowMatchEulerDiscreteScheduler"}},
                       {"text_encoder", {"transformers", "Qwen2_5_VLForConditionalGeneration"}},
                       {"tokenizer", {"transformers", "Qwen2Tokenizer"}},
                       {"transformer", {"diffusers", "QwenImageTransformer2DModel"}},
                       {"vae", {"diffusers", "AutoencoderKLQwenImage"}}};
  files.write_weights = [transformer = files.transformer_config, vae = files.vae_config,
                         text_encoder = files.text_encoder_config, seed](const fs::path& folder) {
    std::mt19937_64 generator(seed);
    write_weights(folder / "transformer" / "diffusion_pytorch_model.safetensors",
                  transformer_tensor_specs(transformer), generator);
    write_weights(folder / "vae" / "diffusion_pytorch_model.safetensors", vae_tensor_specs(vae),
                  generator);
    write_weights(folder / "text_encoder" / "model.safetensors",
                  text_encoder_tensor_specs(text_encoder), generator);
  };
  write_model_directory(directory, files, "the tiny model");
}

fs::path default_model_directory() {
  fs::path cache;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0') {
    cache = xdg;
  } else if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    cache = fs::path(home) / ".cache";
  } else {
    throw InvalidInputError(
        "cannot place the tiny default model: neither XDG_CACHE_HOME nor HOME is set; set one, "
        "or pass --model");
  }
  const fs::path directory =
      cache / "ethereal" / "models" / fmt::format("tiny-qwen-image-edit-v{}", kTinyModelVersion);
  if (!fs::exists(directory)) {
    fs::create_directories(directory.parent_path());
    try {
      write_tiny_model(directory, 2511);
    } catch (const InvalidInputError&) {
      // Another process may have written it meanwhile; use theirs when it is complete.
      if (!fs::exists(directory / "model_index.json")) {
        throw;
      }
    }
  }
  return directory;
}

}  // namespace ethereal
