#include "models/reference_models.h"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "io/safetensors_writer.h"
#include "runtime/error.h"

namespace ethereal {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr std::string_view kQwenImageEdit2511 = "qwen-image-edit-2511";

// First id of the Qwen2.5-VL added tokens ("<|endoftext|>") in the published vocabulary.
constexpr std::int32_t kQwen2AddedTokensFirstId = 151643;

// diffusers and transformers save checkpoints in shards of at most 5 GB ("5GB" =
// 5 * 10^9 bytes). This gives 9 transformer shards, as published, and 4 text encoder shards.
constexpr std::uint64_t kShardBytes = 5'000'000'000;

// Qwen-Image-Edit-2511 as published in diffusers layout (Qwen/Qwen-Image-Edit-2511).
// NOTE: zero_cond_t is inferred from the reference implementations of Edit-2511 (diffusers,
// ComfyUI, stable-diffusion.cpp); the 2511 transformer/config.json itself was not read. The
// "_diffusers_version" and "_name_or_path" keys are left out.
json qwen_image_edit_2511_transformer() {
  return {{"_class_name", "QwenImageTransformer2DModel"},
          {"attention_head_dim", 128},
          {"axes_dims_rope", {16, 56, 56}},
          {"guidance_embeds", false},
          {"in_channels", 64},
          {"joint_attention_dim", 3584},
          {"num_attention_heads", 24},
          {"num_layers", 60},
          {"out_channels", 16},
          {"patch_size", 2},
          {"zero_cond_t", true}};
}

// The Wan-2.1 VAE architecture with the Qwen-Image latent statistics.
json qwen_image_edit_2511_vae() {
  return {{"_class_name", "AutoencoderKLQwenImage"},
          {"attn_scales", json::array()},
          {"base_dim", 96},
          {"dim_mult", {1, 2, 4, 4}},
          {"dropout", 0.0},
          {"input_channels", 3},
          {"latents_mean",
           {-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715,
            0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921}},
          {"latents_std",
           {2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652,
            1.5579, 1.6382, 1.1253, 2.8251, 1.9160}},
          {"num_res_blocks", 2},
          {"temperal_downsample", {false, true, true}},
          {"z_dim", 16}};
}

// Qwen2.5-VL-7B-Instruct as saved by transformers 4.53: the text keys at the top level and
// again in "text_config", the vision tower in "vision_config".
json qwen2_5_vl_7b_text_encoder() {
  const json rope_scaling = {
      {"mrope_section", {16, 24, 24}}, {"rope_type", "default"}, {"type", "default"}};
  json text_config = {{"architectures", {"Qwen2_5_VLForConditionalGeneration"}},
                      {"attention_dropout", 0.0},
                      {"bos_token_id", 151643},
                      {"eos_token_id", 151645},
                      {"hidden_act", "silu"},
                      {"hidden_size", 3584},
                      {"image_token_id", nullptr},
                      {"initializer_range", 0.02},
                      {"intermediate_size", 18944},
                      {"layer_types", std::vector<std::string>(28, "full_attention")},
                      {"max_position_embeddings", 128000},
                      {"max_window_layers", 28},
                      {"model_type", "qwen2_5_vl_text"},
                      {"num_attention_heads", 28},
                      {"num_hidden_layers", 28},
                      {"num_key_value_heads", 4},
                      {"rms_norm_eps", 1e-06},
                      {"rope_scaling", rope_scaling},
                      {"rope_theta", 1000000.0},
                      {"sliding_window", nullptr},
                      {"torch_dtype", "float32"},
                      {"use_cache", true},
                      {"use_sliding_window", false},
                      {"video_token_id", nullptr},
                      {"vision_end_token_id", 151653},
                      {"vision_start_token_id", 151652},
                      {"vision_token_id", 151654},
                      {"vocab_size", 152064}};
  return {{"architectures", {"Qwen2_5_VLForConditionalGeneration"}},
          {"attention_dropout", 0.0},
          {"bos_token_id", 151643},
          {"eos_token_id", 151645},
          {"hidden_act", "silu"},
          {"hidden_size", 3584},
          {"image_token_id", 151655},
          {"initializer_range", 0.02},
          {"intermediate_size", 18944},
          {"max_position_embeddings", 128000},
          {"max_window_layers", 28},
          {"model_type", "qwen2_5_vl"},
          {"num_attention_heads", 28},
          {"num_hidden_layers", 28},
          {"num_key_value_heads", 4},
          {"rms_norm_eps", 1e-06},
          {"rope_scaling", rope_scaling},
          {"rope_theta", 1000000.0},
          {"sliding_window", 32768},
          {"text_config", std::move(text_config)},
          {"tie_word_embeddings", false},
          {"torch_dtype", "bfloat16"},
          {"transformers_version", "4.53.1"},
          {"use_cache", true},
          {"use_sliding_window", false},
          {"video_token_id", 151656},
          {"vision_config",
           {{"depth", 32},
            {"fullatt_block_indexes", {7, 15, 23, 31}},
            {"hidden_act", "silu"},
            {"hidden_size", 1280},
            {"in_channels", 3},
            {"in_chans", 3},
            {"initializer_range", 0.02},
            {"intermediate_size", 3420},
            {"model_type", "qwen2_5_vl"},
            {"num_heads", 16},
            {"out_hidden_size", 3584},
            {"patch_size", 14},
            {"spatial_merge_size", 2},
            {"spatial_patch_size", 14},
            {"temporal_patch_size", 2},
            {"tokens_per_second", 2},
            {"torch_dtype", "float32"},
            {"window_size", 112}}},
          {"vision_end_token_id", 151653},
          {"vision_start_token_id", 151652},
          {"vision_token_id", 151654},
          {"vocab_size", 152064}};
}

// FlowMatchEulerDiscreteScheduler of the Qwen-Image edit models: exponential time shift with
// mu from the image token count (0.5 at 256 tokens to 0.9 at 8192), last sigma stretched to
// 0.02.
json qwen_image_edit_scheduler() {
  return {{"_class_name", "FlowMatchEulerDiscreteScheduler"},
          {"base_image_seq_len", 256},
          {"base_shift", 0.5},
          {"invert_sigmas", false},
          {"max_image_seq_len", 8192},
          {"max_shift", 0.9},
          {"num_train_timesteps", 1000},
          {"shift", 1.0},
          {"shift_terminal", 0.02},
          {"stochastic_sampling", false},
          {"time_shift_type", "exponential"},
          {"use_beta_sigmas", false},
          {"use_dynamic_shifting", true},
          {"use_exponential_sigmas", false},
          {"use_karras_sigmas", false}};
}

// The Qwen2-VL image processor as transformers saves it: CLIP mean and std, bicubic
// resampling (PIL 3), 14-pixel patches merged 2 x 2.
// NOTE: the keys follow transformers' saved form of Qwen2VLImageProcessor; the 2511
// processor/preprocessor_config.json itself was not read.
json qwen2_vl_processor() {
  return {{"do_convert_rgb", true},
          {"do_normalize", true},
          {"do_rescale", true},
          {"do_resize", true},
          {"image_mean", {0.48145466, 0.4578275, 0.40821073}},
          {"image_processor_type", "Qwen2VLImageProcessor"},
          {"image_std", {0.26862954, 0.26130258, 0.27577711}},
          {"max_pixels", 12845056},
          {"merge_size", 2},
          {"min_pixels", 3136},
          {"patch_size", 14},
          {"processor_class", "Qwen2VLProcessor"},
          {"resample", 3},
          {"rescale_factor", 0.00392156862745098},
          {"size", {{"longest_edge", 12845056}, {"shortest_edge", 3136}}},
          {"temporal_patch_size", 2}};
}

json qwen_image_edit_2511_model_index() {
  return {{"_class_name", "QwenImageEditPlusPipeline"},
          {"_name_or_path", "Qwen/Qwen-Image-Edit-2511"},
          {"ethereal_sparse_reference_model", kQwenImageEdit2511},
          {"processor", {"transformers", "Qwen2VLProcessor"}},
          {"scheduler", {"diffusers", "FlowMatchEulerDiscreteScheduler"}},
          {"text_encoder", {"transformers", "Qwen2_5_VLForConditionalGeneration"}},
          {"tokenizer", {"transformers", "Qwen2Tokenizer"}},
          {"transformer", {"diffusers", "QwenImageTransformer2DModel"}},
          {"vae", {"diffusers", "AutoencoderKLQwenImage"}}};
}

void require_known_name(std::string_view name) {
  const std::vector<std::string> names = reference_model_names();
  if (std::find(names.begin(), names.end(), name) == names.end()) {
    throw InvalidInputError(fmt::format("unknown reference model \"{}\"; known models: {}", name,
                                        fmt::join(names, ", ")));
  }
}

// The text encoder's tensors with lm_head, which the published checkpoints store.
std::vector<TensorSpec> stored_text_encoder_specs(const json& config) {
  std::vector<TensorSpec> specs = text_encoder_tensor_specs(config);
  const std::int64_t vocab = config.at("vocab_size");
  const std::int64_t hidden = config.at("hidden_size");
  specs.push_back({"lm_head.weight", {vocab, hidden}});
  return specs;
}

std::vector<TensorSpec> tensor_specs(const ModelDirectoryFiles& files, std::string_view component) {
  if (component == "transformer") {
    return transformer_tensor_specs(files.transformer_config);
  }
  if (component == "vae") {
    return vae_tensor_specs(files.vae_config);
  }
  if (component == "text_encoder") {
    return stored_text_encoder_specs(files.text_encoder_config);
  }
  throw InvalidInputError(fmt::format(
      "unknown model component \"{}\"; use transformer, text_encoder or vae", component));
}

// Writes the component's tensors as bf16 zero entries (holes): in shards of kShardBytes with an
// index when `sharded` is true, else as one file "<base_name>.safetensors".
void write_sparse_weights(const fs::path& folder, std::string_view base_name, bool sharded,
                          const std::vector<TensorSpec>& specs) {
  std::vector<SafetensorsEntry> entries;
  entries.reserve(specs.size());
  for (const TensorSpec& spec : specs) {
    entries.push_back(zero_safetensors_entry(spec.name, DType::bf16, spec.shape));
  }
  const SafetensorsMetadata metadata = {{"format", "pt"}};
  if (sharded) {
    write_sharded_safetensors(folder, base_name, entries, kShardBytes, metadata);
  } else {
    write_safetensors(folder / (std::string(base_name) + ".safetensors"), entries, metadata);
  }
}

}  // namespace

std::vector<std::string> reference_model_names() {
  return {std::string(kQwenImageEdit2511)};
}

ModelDirectoryFiles reference_model_files(std::string_view name) {
  require_known_name(name);
  ModelDirectoryFiles files;
  files.model_index = qwen_image_edit_2511_model_index();
  files.transformer_config = qwen_image_edit_2511_transformer();
  files.vae_config = qwen_image_edit_2511_vae();
  files.text_encoder_config = qwen2_5_vl_7b_text_encoder();
  files.scheduler_config = qwen_image_edit_scheduler();
  files.processor_config = qwen2_vl_processor();
  files.vocabulary = generated_model_vocabulary(kQwen2AddedTokensFirstId);
  files.write_weights = [transformer = files.transformer_config,
                         text_encoder = files.text_encoder_config,
                         vae = files.vae_config](const fs::path& folder) {
    write_sparse_weights(folder / "transformer", "diffusion_pytorch_model", true,
                         transformer_tensor_specs(transformer));
    write_sparse_weights(folder / "text_encoder", "model", true,
                         stored_text_encoder_specs(text_encoder));
    write_sparse_weights(folder / "vae", "diffusion_pytorch_model", false, vae_tensor_specs(vae));
  };
  return files;
}

std::vector<TensorSpec> reference_model_tensor_specs(std::string_view name,
                                                     std::string_view component) {
  return tensor_specs(reference_model_files(name), component);
}

std::uint64_t reference_model_weight_bytes(std::string_view name, std::string_view component) {
  std::uint64_t bytes = 0;
  for (const TensorSpec& spec : reference_model_tensor_specs(name, component)) {
    bytes += dtype_bytes(DType::bf16, static_cast<std::size_t>(shape_numel(spec.shape)));
  }
  return bytes;
}

void write_sparse_model(const fs::path& directory, std::string_view name) {
  write_model_directory(directory, reference_model_files(name),
                        fmt::format("the reference model {}", name));
}

}  // namespace ethereal
