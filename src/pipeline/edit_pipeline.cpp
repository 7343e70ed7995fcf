#include "pipeline/edit_pipeline.h"

#include <cmath>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "io/resample.h"
#include "io/safetensors_checkpoint.h"
#include "kernels/cpu/concat.h"
#include "models/qwen2_5_vl/config.h"
#include "models/qwen2_5_vl/image_processor.h"
#include "models/qwen2_5_vl/language_model.h"
#include "models/qwen2_5_vl/language_model_streaming.h"
#include "models/qwen2_5_vl/positions.h"
#include "models/qwen2_5_vl/tensor_names.h"
#include "models/qwen2_5_vl/vision_tower.h"
#include "models/qwen_image/transformer.h"
#include "models/qwen_image/transformer_tensor_names.h"
#include "models/qwen_image/vae.h"
#include "models/tokenizer/bpe_tokenizer.h"
#include "models/weight_loader.h"
#include "pipeline/latents.h"
#include "pipeline/prompt.h"
#include "pipeline/scheduler.h"
#include "runtime/allocator.h"
#include "runtime/error.h"

namespace ethereal {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Pixel areas of the two copies of every input image.
constexpr double kVisionArea = 384.0 * 384.0;
// VAE spatial factor (8) times transformer patch size (2).
constexpr int kSizeMultiple = 16;
constexpr int kLatentChannels = 16;

// One input image prepared for both encoders.
struct PreparedImage {
  ProcessedImage vision;  // processor patch rows and grid
  Tensor vae_input;       // [1, 3, H, W] in [-1, 1]
  ImageSize vae_size;
};

// RGB 8-bit -> [1, 3, H, W] f32 in [-1, 1] (x / 255 * 2 - 1).
Tensor image_to_tensor(const Image& rgb) {
  Tensor tensor = Tensor::empty({1, 3, rgb.height(), rgb.width()}, DType::f32);
  if (tensor.is_dry()) {
    return tensor;
  }
  float* out = tensor.data_as<float>();
  const std::int64_t plane = static_cast<std::int64_t>(rgb.width()) * rgb.height();
  for (int y = 0; y < rgb.height(); ++y) {
    for (int x = 0; x < rgb.width(); ++x) {
      for (int c = 0; c < 3; ++c) {
        out[c * plane + static_cast<std::int64_t>(y) * rgb.width() + x] =
            static_cast<float>(rgb.at(x, y, c)) / 255.0f * 2.0f - 1.0f;
      }
    }
  }
  return tensor;
}

// [1, 3, H, W] in [-1, 1] -> RGB 8-bit: (x / 2 + 0.5) clamped to [0, 1], times 255, rounded
// half to even as numpy's round does.
Image tensor_to_image(const Tensor& decoded) {
  const int height = static_cast<int>(decoded.size(2));
  const int width = static_cast<int>(decoded.size(3));
  Image image(width, height, 3);
  if (decoded.is_dry()) {
    return image;
  }
  const std::vector<float> values = decoded.to_floats();
  const std::size_t plane = static_cast<std::size_t>(width) * height;
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < 3; ++c) {
        const float v = values[c * plane + static_cast<std::size_t>(y) * width + x];
        const float unit = std::clamp(v / 2.0f + 0.5f, 0.0f, 1.0f);
        image.at(x, y, c) = static_cast<std::uint8_t>(std::nearbyint(unit * 255.0f));
      }
    }
  }
  return image;
}

}  // namespace

// The text encoder's two parts, loaded and released together.
struct TextEncoderWeights {
  Qwen25VlVisionTower vision;
  Qwen25VlLanguageModel language_model;
};

// A prompt as the language model reads it.
struct PromptTokens {
  std::vector<std::int64_t> ids;
  Tensor positions;  // int64 [3, S]
  // Leading system-prompt tokens, dropped from the hidden states.
  std::int64_t drop_tokens = 0;
};

struct EditPipeline::Components {
  ModelPrecision precision;
  PipelineLoadOptions options;
  std::unique_ptr<LoraSet> loras;
  std::unique_ptr<BpeTokenizer> tokenizer;
  Qwen2VlImageProcessorConfig processor;
  Qwen25VlConfig text_config;
  FlowMatchSchedulerConfig scheduler;
  std::shared_ptr<const ResidencyObserver> observer;
  // Each component with its placement. With the resident placement both VAE entries are one
  // kept full VAE; otherwise the encode stage loads only the encoder and the decode stage only
  // the decoder. With sequential_offload the text encoder is split instead: its vision tower is
  // loaded for the image features and released, then the language model's final norm is loaded
  // while its layers stream.
  std::unique_ptr<ComponentResidency<TextEncoderWeights>> text_encoder;
  std::unique_ptr<ComponentResidency<Qwen25VlVisionTower>> vision_tower;
  std::unique_ptr<ComponentResidency<Qwen25VlStreamedLanguageModel>> streamed_language_model;
  std::unique_ptr<ComponentResidency<QwenImageTransformer>> transformer;
  std::shared_ptr<ComponentResidency<QwenImageVae>> vae_encoder;
  std::shared_ptr<ComponentResidency<QwenImageVae>> vae_decoder;

  PreparedImage prepare(const Image& input, double reference_pixels) const;
  Tensor vision_embeddings(const Qwen25VlVisionTower& vision,
                           const std::vector<PreparedImage>& images) const;
  PromptTokens tokenize_prompt(const std::string& prompt,
                               const std::vector<PreparedImage>& images) const;
  // Text-encoder hidden states [S_txt, hidden] without the system-prompt tokens.
  Tensor encode_prompt(const TextEncoderWeights& encoder, const std::string& prompt,
                       const std::vector<PreparedImage>& images, const Tensor& vision_embeddings,
                       const Qwen25VlOptions& options) const;
  // The hidden states of `prompts` (the conditional, then the negative prompt when CFG is on),
  // each as encode_prompt returns it, with the language model's layers streamed once for all.
  std::vector<Tensor> encode_prompts_streamed(const std::vector<std::string>& prompts,
                                              const std::vector<PreparedImage>& images,
                                              const Qwen25VlOptions& options) const;
  Tensor read_initial_noise(const std::filesystem::path& path, const Shape& shape) const;
};

EditPipeline::EditPipeline(std::unique_ptr<Components> components)
    : components_(std::move(components)) {}
EditPipeline::EditPipeline(EditPipeline&&) noexcept = default;
EditPipeline& EditPipeline::operator=(EditPipeline&&) noexcept = default;
EditPipeline::~EditPipeline() = default;

std::string_view placement_name(Placement placement) {
  switch (placement) {
    case Placement::resident: return "resident";
    case Placement::model_offload: return "model_offload";
    case Placement::sequential_offload: return "sequential_offload";
  }
  return "unknown";
}

Placement parse_placement(std::string_view name) {
  for (Placement placement :
       {Placement::resident, Placement::model_offload, Placement::sequential_offload}) {
    if (placement_name(placement) == name) {
      return placement;
    }
  }
  throw InvalidInputError(fmt::format(
      "unknown placement \"{}\"; use resident, model_offload or sequential_offload", name));
}

EditPipeline EditPipeline::load(const ModelDirectory& model, ModelPrecision precision) {
  PipelineLoadOptions options;
  options.precision = precision;
  return load(model, options);
}

namespace {

// Paths, configurations and options that the component loaders read after load() returns.
struct ComponentSources {
  ModelDirectory model;
  ModelPrecision precision;
  WeightLoadOptions text_encoder_weights;
  WeightLoadOptions transformer_weights;
  Qwen25VlConfig text_config;
  QwenImageTransformerConfig transformer_config;
  int kept_blocks = 2;
  std::shared_ptr<const ResidencyObserver> observer;
  // sequential_offload: the transformer checkpoint, kept open, and where its blocks stream from.
  std::shared_ptr<const SafetensorsCheckpoint> transformer_checkpoint;
  std::shared_ptr<TransformerBlockSource> block_source;
  // sequential_offload: where the text encoder's language-model layers stream from.
  std::shared_ptr<Qwen25VlLayerSource> text_layer_source;

  TextEncoderWeights load_text_encoder() const {
    const SafetensorsCheckpoint checkpoint = model.open_weights(ModelComponent::text_encoder);
    WeightLoader loader(checkpoint, qwen25vl_tensor_name_map(detect_qwen25vl_layout(checkpoint)),
                        "text encoder", text_encoder_weights);
    TextEncoderWeights encoder{
        Qwen25VlVisionTower::load(loader, text_config.vision, precision),
        Qwen25VlLanguageModel::load(loader, text_config, precision),
    };
    loader.finish();
    return encoder;
  }

  // The vision tower alone, viewed in the checkpoint's mapping like a whole text encoder.
  Qwen25VlVisionTower load_vision_tower() const {
    const SafetensorsCheckpoint checkpoint = model.open_weights(ModelComponent::text_encoder);
    WeightLoader loader(checkpoint, qwen25vl_tensor_name_map(detect_qwen25vl_layout(checkpoint)),
                        "text encoder", text_encoder_weights);
    return Qwen25VlVisionTower::load(loader, text_config.vision, precision);
  }

  // The final norm; the layers stream from text_layer_source during forward.
  Qwen25VlStreamedLanguageModel load_streamed_language_model() const {
    Qwen25VlLayerStreamingOptions streaming;
    streaming.kept_layers = kept_blocks;
    streaming.observer = observer;
    return Qwen25VlStreamedLanguageModel::load(text_layer_source, streaming);
  }

  // Opens the text encoder checkpoint for streaming its layers and embedding rows.
  void prepare_text_streaming() {
    text_layer_source =
        std::make_shared<Qwen25VlLayerSource>(std::make_shared<const SafetensorsCheckpoint>(
                                                  model.open_weights(ModelComponent::text_encoder)),
                                              text_encoder_weights, text_config, precision);
  }

  QwenImageTransformer load_transformer() const {
    const SafetensorsCheckpoint checkpoint = model.open_weights(ModelComponent::transformer);
    return QwenImageTransformer::load(checkpoint, transformer_config, precision,
                                      comfy_transformer_tensor_name, transformer_weights);
  }

  // Top-level weights only; the blocks stay in their home tier and stream during forward.
  QwenImageTransformer load_streamed_transformer() const {
    TransformerStreamingOptions streaming;
    streaming.kept_blocks = kept_blocks;
    streaming.observer = observer;
    return QwenImageTransformer::load_streamed(transformer_checkpoint, transformer_config,
                                               precision, comfy_transformer_tensor_name,
                                               transformer_weights, streaming, block_source);
  }

  // Opens the transformer checkpoint for streaming and picks the blocks' home: the checkpoint,
  // or the block cache (written now when missing). A cache that cannot be written (a full
  // disk, for example) is logged and the blocks stream from the checkpoint.
  void prepare_streaming(const PipelineLoadOptions& options) {
    transformer_checkpoint = std::make_shared<const SafetensorsCheckpoint>(
        model.open_weights(ModelComponent::transformer));
    const bool use_cache =
        options.block_cache == BlockCachePolicy::always ||
        (options.block_cache == BlockCachePolicy::automatic &&
         blocks_change_format(*transformer_checkpoint, comfy_transformer_tensor_name,
                              transformer_weights, transformer_config));
    if (use_cache) {
      const std::filesystem::path directory = options.block_cache_directory.empty()
                                                  ? default_block_cache_directory()
                                                  : options.block_cache_directory;
      try {
        block_source = TransformerBlockCache::open(
            transformer_checkpoint, comfy_transformer_tensor_name, transformer_weights,
            transformer_config, precision, directory);
        return;
      } catch (const IoError& error) {
        spdlog::warn(
            "cannot write the transformer block cache in {}; streaming the blocks from "
            "the checkpoint instead: {}",
            directory.string(), error.what());
      }
    }
    block_source = std::make_shared<CheckpointBlockSource>(
        transformer_checkpoint, comfy_transformer_tensor_name, transformer_weights,
        transformer_config, precision);
  }

  QwenImageVae load_vae(VaeParts parts) const {
    return QwenImageVae::load_directory(model.folder(ModelComponent::vae), precision, parts);
  }
};

// Runs `load` against a dry-run allocator: every tensor name, shape and dtype is checked
// against the checkpoint headers without reading or keeping any weight.
template <typename Load>
void check_in_dry_run(const Load& load) {
  CpuCachingAllocator dry_allocator(CpuCachingAllocator::Options{.dry_run = true});
  const ScopedAllocator scope(dry_allocator);
  (void)load();
}

}  // namespace

EditPipeline EditPipeline::load(const ModelDirectory& model, const PipelineLoadOptions& options) {
  if (options.kept_blocks < 1) {
    throw InvalidInputError(fmt::format(
        "kept_blocks must be at least 1 (the block that computes), got {}", options.kept_blocks));
  }
  auto c = std::make_unique<Components>();
  const ModelPrecision precision = options.precision;
  c->precision = precision;
  c->options = options;
  c->observer = std::make_shared<const ResidencyObserver>(options.on_residency_event);
  if (!options.loras.empty()) {
    c->loras = std::make_unique<LoraSet>(LoraSet::read(options.loras));
  }
  c->tokenizer = std::make_unique<BpeTokenizer>(
      BpeTokenizer::from_directory(model.folder(ModelComponent::tokenizer)));
  if (auto path = model.config_path(ModelComponent::processor)) {
    c->processor = Qwen2VlImageProcessorConfig::from_file(*path);
  }
  c->scheduler = FlowMatchSchedulerConfig::from_file(*model.config_path(ModelComponent::scheduler));
  c->text_config = Qwen25VlConfig::from_file(*model.config_path(ModelComponent::text_encoder));

  auto sources = std::make_shared<ComponentSources>(ComponentSources{
      .model = model,
      .precision = precision,
      .text_encoder_weights = {},
      .transformer_weights = {},
      .text_config = c->text_config,
      .transformer_config =
          QwenImageTransformerConfig::from_file(*model.config_path(ModelComponent::transformer)),
      .kept_blocks = options.kept_blocks,
      .observer = c->observer,
  });
  sources->text_encoder_weights.quant = options.quant;
  sources->text_encoder_weights.lora_at_run_time = options.lora_at_run_time;
  sources->transformer_weights = sources->text_encoder_weights;
  {
    const SafetensorsCheckpoint checkpoint = model.open_weights(ModelComponent::transformer);
    QwenImageTransformerConfig& config = sources->transformer_config;
    config.zero_cond_t = config.zero_cond_t || checkpoint_sets_zero_cond_t(checkpoint);
    if (c->loras) {
      const WeightLoader probe(checkpoint, comfy_transformer_tensor_name, "transformer");
      c->loras->check([&](std::string_view module) { return probe.linear_shape(module); });
      sources->transformer_weights.lora = c->loras.get();
    }
  }
  if (sources->transformer_config.joint_attention_dim != c->text_config.text.hidden_size) {
    throw InvalidInputError(fmt::format(
        "{}: the transformer's joint_attention_dim ({}) differs from the text encoder's "
        "hidden_size ({}); the components come from different models",
        model.root().string(), sources->transformer_config.joint_attention_dim,
        c->text_config.text.hidden_size));
  }

  const bool resident = options.placement == Placement::resident;
  if (!resident) {
    // Offloaded components are read during edits, so their files are checked now.
    check_in_dry_run([&] { return sources->load_text_encoder(); });
    check_in_dry_run([&] { return sources->load_transformer(); });
    check_in_dry_run([&] { return sources->load_vae({}); });
  }
  if (options.placement == Placement::sequential_offload) {
    sources->prepare_text_streaming();
    c->vision_tower = std::make_unique<ComponentResidency<Qwen25VlVisionTower>>(
        "text_encoder_vision", [sources] { return sources->load_vision_tower(); },
        /*keep_loaded=*/false, c->observer);
    c->streamed_language_model =
        std::make_unique<ComponentResidency<Qwen25VlStreamedLanguageModel>>(
            "text_encoder", [sources] { return sources->load_streamed_language_model(); },
            /*keep_loaded=*/false, c->observer);
    sources->prepare_streaming(options);
    c->transformer = std::make_unique<ComponentResidency<QwenImageTransformer>>(
        "transformer", [sources] { return sources->load_streamed_transformer(); },
        /*keep_loaded=*/false, c->observer);
  } else {
    c->text_encoder = std::make_unique<ComponentResidency<TextEncoderWeights>>(
        "text_encoder", [sources] { return sources->load_text_encoder(); }, resident, c->observer);
    c->transformer = std::make_unique<ComponentResidency<QwenImageTransformer>>(
        "transformer", [sources] { return sources->load_transformer(); }, resident, c->observer);
  }
  if (resident) {
    c->vae_encoder = std::make_shared<ComponentResidency<QwenImageVae>>(
        "vae", [sources] { return sources->load_vae({}); }, /*keep_loaded=*/true, c->observer);
    c->vae_decoder = c->vae_encoder;
  } else {
    c->vae_encoder = std::make_shared<ComponentResidency<QwenImageVae>>(
        "vae", [sources] { return sources->load_vae({.encoder = true, .decoder = false}); },
        /*keep_loaded=*/false, c->observer);
    c->vae_decoder = std::make_shared<ComponentResidency<QwenImageVae>>(
        "vae", [sources] { return sources->load_vae({.encoder = false, .decoder = true}); },
        /*keep_loaded=*/false, c->observer);
  }
  return EditPipeline(std::move(c));
}

PreparedImage EditPipeline::Components::prepare(const Image& input, double reference_pixels) const {
  const Image rgb = to_rgb(input);
  const double ratio = static_cast<double>(rgb.width()) / rgb.height();
  PreparedImage prepared;

  const ImageSize vision_size = calculate_dimensions(kVisionArea, ratio);
  prepared.vision = process_qwen2vl_image(
      resize(rgb, vision_size.width, vision_size.height, ResampleFilter::kLanczos), processor);

  prepared.vae_size = calculate_dimensions(reference_pixels, ratio);
  prepared.vae_input = image_to_tensor(
      resize(rgb, prepared.vae_size.width, prepared.vae_size.height, ResampleFilter::kLanczos));
  return prepared;
}

Tensor EditPipeline::Components::vision_embeddings(const Qwen25VlVisionTower& vision,
                                                   const std::vector<PreparedImage>& images) const {
  std::vector<Tensor> rows;
  std::vector<ImageGrid> grids;
  for (const PreparedImage& image : images) {
    rows.push_back(image.vision.pixel_rows);
    grids.push_back(image.vision.grid);
  }
  return vision.forward(cpu::concat(rows, 0), grids);
}

PromptTokens EditPipeline::Components::tokenize_prompt(
    const std::string& prompt, const std::vector<PreparedImage>& images) const {
  std::vector<std::int64_t> counts;
  std::vector<ImageGrid> grids;
  for (const PreparedImage& image : images) {
    counts.push_back(merged_token_count(image.vision.grid, text_config.vision.spatial_merge_size));
    grids.push_back(image.vision.grid);
  }
  const EncodedPrompt encoded = encode_edit_prompt(*tokenizer, prompt, counts);
  PromptTokens tokens;
  tokens.ids.assign(encoded.input_ids.begin(), encoded.input_ids.end());
  tokens.positions = mrope_position_ids(tokens.ids, grids, text_config);
  tokens.drop_tokens = encoded.drop_tokens;
  return tokens;
}

namespace {

// [S, hidden] -> [S - drop, hidden]
Tensor drop_system_prompt(const Tensor& hidden, std::int64_t drop_tokens) {
  return hidden.narrow(0, drop_tokens, hidden.size(0) - drop_tokens).contiguous();
}

}  // namespace

Tensor EditPipeline::Components::encode_prompt(const TextEncoderWeights& encoder,
                                               const std::string& prompt,
                                               const std::vector<PreparedImage>& images,
                                               const Tensor& vision_embeds,
                                               const Qwen25VlOptions& options) const {
  const PromptTokens tokens = tokenize_prompt(prompt, images);
  const Tensor hidden = encoder.language_model.forward(
      encoder.language_model.embed(tokens.ids, vision_embeds), tokens.positions, options);
  return drop_system_prompt(hidden, tokens.drop_tokens);
}

std::vector<Tensor> EditPipeline::Components::encode_prompts_streamed(
    const std::vector<std::string>& prompts, const std::vector<PreparedImage>& images,
    const Qwen25VlOptions& options) const {
  Tensor vision_embeds;
  {
    const ResidentHandle<Qwen25VlVisionTower> vision = vision_tower->acquire();
    vision_embeds = vision_embeddings(*vision, images);
  }
  const ResidentHandle<Qwen25VlStreamedLanguageModel> language_model =
      streamed_language_model->acquire();
  std::vector<PromptTokens> tokens;
  std::vector<Tensor> inputs_embeds;
  std::vector<Tensor> positions;
  for (const std::string& prompt : prompts) {
    tokens.push_back(tokenize_prompt(prompt, images));
    inputs_embeds.push_back(language_model->embed(tokens.back().ids, vision_embeds));
    positions.push_back(tokens.back().positions);
  }
  vision_embeds = Tensor();
  std::vector<Tensor> hidden = language_model->forward(inputs_embeds, positions, options);
  inputs_embeds.clear();
  for (std::size_t k = 0; k < hidden.size(); ++k) {
    hidden[k] = drop_system_prompt(hidden[k], tokens[k].drop_tokens);
  }
  return hidden;
}

Tensor EditPipeline::Components::read_initial_noise(const std::filesystem::path& path,
                                                    const Shape& shape) const {
  const SafetensorsCheckpoint file = SafetensorsCheckpoint::open(path);
  if (!file.contains("noise")) {
    throw InvalidInputError(path.string() +
                            ": no tensor named \"noise\"; the initial-noise file "
                            "must hold one f32 tensor \"noise\" of shape " +
                            shape_str(shape));
  }
  Tensor noise = file.tensor("noise");
  const Shape with_frame = {shape[0], shape[1], 1, shape[2], shape[3]};
  if (noise.shape() == with_frame) {
    noise = noise.view(shape);
  }
  if (noise.shape() != shape) {
    throw InvalidInputError(fmt::format("{}: tensor \"noise\" has shape {}, but this edit needs {}",
                                        path.string(), shape_str(noise.shape()), shape_str(shape)));
  }
  return noise.to(DType::f32).clone();
}

void validate_edit_request(const EditRequest& request) {
  if (request.images.empty()) {
    throw InvalidInputError("no input image; pass at least one --image");
  }
  if (request.prompt.find_first_not_of(" \t\r\n") == std::string::npos) {
    throw InvalidInputError("the prompt is empty; pass the edit instruction with --prompt");
  }
  if (!request.sigmas && request.steps < 1) {
    throw InvalidInputError(fmt::format("--steps must be at least 1, got {}", request.steps));
  }
  if (!(request.cfg_scale >= 0.0) || request.cfg_scale > 100.0) {
    throw InvalidInputError(
        fmt::format("--cfg-scale must be between 0 and 100, got {}", request.cfg_scale));
  }
  if (!(request.reference_pixels >= 256.0 * 256.0) || request.reference_pixels > 4096.0 * 4096.0) {
    throw InvalidInputError(
        fmt::format("the reference image area must be between 256^2 and 4096^2 pixels, got {}",
                    request.reference_pixels));
  }
  if (request.output_size) {
    const ImageSize& size = *request.output_size;
    if (size.width < kSizeMultiple || size.height < kSizeMultiple || size.width > 8192 ||
        size.height > 8192) {
      throw InvalidInputError(fmt::format("output size {}x{} is outside 16..8192 pixels per side",
                                          size.width, size.height));
    }
  }
  for (std::size_t i = 0; i < request.images.size(); ++i) {
    const Image& image = request.images[i];
    if (image.width() < kSizeMultiple || image.height() < kSizeMultiple) {
      throw InvalidInputError(
          fmt::format("input image {} is {}x{} pixels; the VAE needs at least 16x16", i + 1,
                      image.width(), image.height()));
    }
  }
}

EditResult EditPipeline::run(const EditRequest& request, const EditMemoryOptions& memory,
                             const EditProgressCallback& progress) const {
  validate_edit_request(request);
  const Components& c = *components_;
  const DType dtype = c.precision.compute_dtype;
  auto report = [&](const std::string& stage, int step, int steps, double seconds) {
    if (progress) {
      progress({stage, step, steps, seconds});
    }
  };
  EditResult result;

  // Output size: requested, else from the last image, floored to multiples of 16.
  ImageSize size = request.output_size
                       ? *request.output_size
                       : default_output_size(request.images.back().width(),
                                             request.images.back().height(), kSizeMultiple);
  size.width = size.width / kSizeMultiple * kSizeMultiple;
  size.height = size.height / kSizeMultiple * kSizeMultiple;
  result.size = size;
  const std::int64_t latent_h = size.height / 8;
  const std::int64_t latent_w = size.width / 8;

  // Text encoding: vision tower once, then the conditional and, with CFG, negative prompt.
  auto start = Clock::now();
  std::vector<PreparedImage> images;
  for (const Image& image : request.images) {
    images.push_back(c.prepare(image, request.reference_pixels));
  }
  Qwen25VlOptions text_options;
  text_options.attention_query_tile = memory.attention_query_tile;
  const bool use_cfg = request.cfg_scale > 1.0;
  Tensor cond_text;
  Tensor uncond_text;
  if (c.streamed_language_model) {
    std::vector<std::string> prompts = {request.prompt};
    if (use_cfg) {
      prompts.push_back(request.negative_prompt);
    }
    std::vector<Tensor> hidden = c.encode_prompts_streamed(prompts, images, text_options);
    cond_text = std::move(hidden.front());
    if (use_cfg) {
      uncond_text = std::move(hidden.back());
    }
  } else {
    const ResidentHandle<TextEncoderWeights> encoder = c.text_encoder->acquire();
    const Tensor vision_embeds = c.vision_embeddings(encoder->vision, images);
    cond_text = c.encode_prompt(*encoder, request.prompt, images, vision_embeds, text_options);
    if (use_cfg) {
      uncond_text =
          c.encode_prompt(*encoder, request.negative_prompt, images, vision_embeds, text_options);
    }
  }
  result.prompt_tokens = cond_text.size(0);
  result.text_encoding_s = seconds_since(start);
  report("text_encoding", 0, 0, result.text_encoding_s);

  // Reference latents: VAE posterior mean, normalised, packed; image shapes in patches.
  start = Clock::now();
  VaeMemoryOptions vae_options;
  vae_options.tiling = {memory.vae_tiling, memory.vae_tile_px, memory.vae_overlap_px};
  vae_options.attention_query_tile = memory.attention_query_tile;
  std::vector<PatchGrid> img_shapes = {{1, latent_h / 2, latent_w / 2}};
  std::vector<Tensor> reference_tokens;
  {
    const ResidentHandle<QwenImageVae> vae = c.vae_encoder->acquire();
    for (PreparedImage& image : images) {
      const Tensor mean = vae->encode(image.vae_input.to(dtype), vae_options);
      image.vae_input = Tensor();
      const Tensor normalized = vae->normalize_latents(mean);
      reference_tokens.push_back(pack_latents(normalized).select(0, 0));
      img_shapes.push_back({1, normalized.size(2) / 2, normalized.size(3) / 2});
    }
  }
  const Tensor references = cpu::concat(reference_tokens, 0).to(dtype);
  reference_tokens.clear();
  result.vae_encode_s = seconds_since(start);
  report("vae_encode", 0, 0, result.vae_encode_s);

  // Initial noise [1, 16, h, w] -> packed target tokens [h/2 * w/2, 64].
  const Shape noise_shape = {1, kLatentChannels, latent_h, latent_w};
  const Tensor noise = request.initial_noise
                           ? c.read_initial_noise(*request.initial_noise, noise_shape)
                           : gaussian_noise(noise_shape, request.seed);
  Tensor latents = pack_latents(noise).select(0, 0).to(dtype).contiguous();
  const std::int64_t target_tokens = latents.size(0);
  result.image_tokens = target_tokens + references.size(0);

  FlowMatchEulerScheduler scheduler(request.scheduler ? *request.scheduler : c.scheduler);
  scheduler.set_timesteps(request.steps, static_cast<int>(target_tokens), request.sigmas);
  result.steps = scheduler.steps();

  // The transformer is on the device for the whole stage. Streamed blocks flow through one
  // stream across all steps and both CFG branches, declared after the transformer so that it
  // is closed first.
  start = Clock::now();
  ResidentHandle<QwenImageTransformer> transformer = c.transformer->acquire();
  TransformerBlockStream block_stream = transformer->open_block_stream();
  // Each step makes one pass over the blocks, two with CFG. With the number of passes known,
  // the stream loads no block after the last one that the stage uses.
  if (scheduler.steps() > 0) {
    block_stream.limit_passes(std::int64_t{scheduler.steps()} * (use_cfg ? 2 : 1));
  }
  TransformerForwardOptions transformer_options;
  transformer_options.attention_query_tile = memory.attention_query_tile;
  transformer_options.block_stream = &block_stream;
  for (int i = 0; i < scheduler.steps(); ++i) {
    const auto step_start = Clock::now();
    const double sigma = scheduler.timesteps()[static_cast<std::size_t>(i)] / 1000.0;
    // [target + references, 64]
    const Tensor input = cpu::concat({latents, references}, 0);
    auto predict = [&](const Tensor& text) {
      TransformerInputs inputs;
      inputs.hidden_states = input;
      inputs.encoder_hidden_states = text;
      inputs.sigma = sigma;
      inputs.img_shapes = img_shapes;
      // Only the target tokens' velocity is used: [target, 64].
      return transformer->forward(inputs, transformer_options)
          .narrow(0, 0, target_tokens)
          .contiguous();
    };
    Tensor velocity = predict(cond_text);
    if (use_cfg) {
      velocity =
          guided_velocity(velocity, predict(uncond_text), static_cast<float>(request.cfg_scale));
    }
    latents = scheduler.step(velocity, i, latents);
    if (i + 1 == scheduler.steps()) {
      // The stage ends with its last step: the stream and the transformer are released before
      // that step is reported.
      block_stream = TransformerBlockStream();
      transformer.release();
    }
    result.step_s.push_back(seconds_since(step_start));
    report("denoising", i + 1, scheduler.steps(), result.step_s.back());
  }
  result.denoising_s = seconds_since(start);

  // Decode: unpack, de-normalise, VAE decode, to 8-bit RGB.
  start = Clock::now();
  const Tensor unpacked = unpack_latents(latents.unsqueeze(0), latent_h, latent_w);
  latents = Tensor();
  {
    const ResidentHandle<QwenImageVae> vae = c.vae_decoder->acquire();
    const Tensor decoded = vae->decode(vae->denormalize_latents(unpacked), vae_options);
    result.image = tensor_to_image(decoded);
  }
  result.vae_decode_s = seconds_since(start);
  report("vae_decode", 0, 0, result.vae_decode_s);
  return result;
}

}  // namespace ethereal
