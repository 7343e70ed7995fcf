#include "models/qwen_image/transformer.h"

#include <cmath>
#include <cstring>
#include <utility>

#include <fmt/format.h>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/modulation.h"
#include "kernels/cpu/norm.h"
#include "models/qwen_image/transformer_block.h"
#include "models/qwen_image/transformer_timestep.h"
#include "runtime/error.h"

namespace ethereal {

namespace {

constexpr const char* kForward = "transformer forward";

const QwenImageTransformerConfig& checked_config(const QwenImageTransformerConfig& config,
                                                 ModelPrecision precision) {
  config.validate("transformer configuration");
  for (DType dtype : {precision.weight_dtype, precision.compute_dtype}) {
    if (dtype != DType::f32 && dtype != DType::bf16) {
      throw InvalidInputError(fmt::format(
          "transformer: precision dtype {} is not supported; use bf16 or f32 for weights and "
          "compute",
          dtype_name(dtype)));
    }
  }
  return config;
}

// The single sample of a [N, C] or [1, N, C] input as a [N, C] view; `width` is C.
Tensor sample_rows(const Tensor& input, const char* name, std::int64_t width) {
  if (!input.defined() || (input.dim() != 2 && input.dim() != 3) || input.size(-1) != width ||
      (input.dtype() != DType::f32 && input.dtype() != DType::bf16)) {
    throw InvalidInputError(fmt::format(
        "{}: {} must be an f32 or bf16 tensor [tokens, {}] or [1, tokens, {}], got {}", kForward,
        name, width, width, input.defined() ? input.describe() : "an undefined tensor"));
  }
  if (input.dim() == 3 && input.size(0) != 1) {
    throw InvalidInputError(fmt::format(
        "{}: {} has batch size {}; the transformer runs one sample per call, so pass the "
        "samples (for example the two CFG branches) in separate calls",
        kForward, name, input.size(0)));
  }
  return input.dim() == 3 ? input.select(0, 0) : input;
}

void check_img_shapes(const std::vector<PatchGrid>& img_shapes, std::int64_t image_tokens) {
  if (img_shapes.empty()) {
    throw InvalidInputError(fmt::format(
        "{}: img_shapes is empty; pass the target grid, then one grid per reference image",
        kForward));
  }
  std::int64_t total = 0;
  for (const PatchGrid& grid : img_shapes) {
    if (grid.frames <= 0 || grid.height <= 0 || grid.width <= 0) {
      throw InvalidInputError(fmt::format(
          "{}: img_shapes entry ({}, {}, {}) must have positive frames, height and width", kForward,
          grid.frames, grid.height, grid.width));
    }
    total += grid.tokens();
  }
  if (total != image_tokens) {
    throw InvalidInputError(fmt::format(
        "{}: img_shapes describe {} image tokens but hidden_states has {}; the grids (in "
        "patches) must cover the target and every reference",
        kForward, total, image_tokens));
  }
}

// The joint key mask uint8 [S_txt + S_img]: the text mask, then 1 for every image token.
// Undefined when there is no text mask.
Tensor joint_key_mask(const Tensor& text_mask, std::int64_t text_tokens,
                      std::int64_t image_tokens) {
  if (!text_mask.defined()) {
    return Tensor();
  }
  const bool integer = text_mask.dtype() == DType::uint8 || text_mask.dtype() == DType::int32 ||
                       text_mask.dtype() == DType::int64;
  const bool shape_ok =
      (text_mask.dim() == 1 && text_mask.size(0) == text_tokens) ||
      (text_mask.dim() == 2 && text_mask.size(0) == 1 && text_mask.size(1) == text_tokens);
  if (!integer || !shape_ok) {
    throw InvalidInputError(fmt::format(
        "{}: text_mask must be a uint8, int32 or int64 tensor [{}] or [1, {}] matching the text "
        "tokens, got {}",
        kForward, text_tokens, text_tokens, text_mask.describe()));
  }
  Tensor mask = Tensor::empty({text_tokens + image_tokens}, DType::uint8);
  mask.narrow(0, 0, text_tokens).copy_from(text_mask.reshape({text_tokens}));
  if (!mask.is_dry()) {
    std::memset(mask.data_as<std::uint8_t>() + text_tokens, 1,
                static_cast<std::size_t>(image_tokens));
  }
  return mask;
}

}  // namespace

QwenImageTransformer::QwenImageTransformer(const QwenImageTransformerConfig& config,
                                           ModelPrecision precision,
                                           TransformerWeightSource& source)
    : config_(checked_config(config, precision)),
      precision_(precision),
      top_(build_top_weights(source, config_)) {
  blocks_.reserve(static_cast<std::size_t>(config_.num_layers));
  for (std::int64_t index = 0; index < config_.num_layers; ++index) {
    blocks_.push_back(build_block_weights(source, config_, index));
  }
}

QwenImageTransformer QwenImageTransformer::load(const SafetensorsCheckpoint& checkpoint,
                                                const QwenImageTransformerConfig& config,
                                                ModelPrecision precision,
                                                const TensorNameMap& names,
                                                const WeightLoadOptions& options) {
  WeightLoader loader(checkpoint, names, "transformer", options);
  CheckpointWeightSource source(loader, precision);
  QwenImageTransformer model(config, precision, source);
  loader.finish();
  return model;
}

QwenImageTransformer::QwenImageTransformer(const QwenImageTransformerConfig& config,
                                           ModelPrecision precision, TransformerTopWeights top,
                                           std::shared_ptr<TransformerBlockSource> blocks,
                                           const TransformerStreamingOptions& streaming)
    : config_(config),
      precision_(precision),
      top_(std::move(top)),
      block_source_(std::move(blocks)),
      streaming_(streaming) {}

QwenImageTransformer QwenImageTransformer::load_streamed(
    std::shared_ptr<const SafetensorsCheckpoint> checkpoint,
    const QwenImageTransformerConfig& config, ModelPrecision precision, const TensorNameMap& names,
    const WeightLoadOptions& options, const TransformerStreamingOptions& streaming,
    std::shared_ptr<TransformerBlockSource> blocks) {
  checked_config(config, precision);
  if (streaming.kept_blocks < 1) {
    throw InvalidInputError(
        fmt::format("transformer: kept_blocks must be at least 1 to stream blocks, got {}",
                    streaming.kept_blocks));
  }
  if (blocks == nullptr) {
    blocks = std::make_shared<CheckpointBlockSource>(checkpoint, names, options, config, precision);
  }
  if (blocks->block_count() != config.num_layers) {
    throw InvalidInputError(fmt::format(
        "transformer: the block source has {} blocks but the configuration has {} layers",
        blocks->block_count(), config.num_layers));
  }
  // The top-level weights are read with pread too, so a file truncated after the model was
  // opened is an IoError here as well.
  const CheckpointReader reader(*checkpoint);
  WeightLoadOptions top_options = options;
  top_options.reader = &reader;
  WeightLoader loader(*checkpoint, names, "transformer", top_options);
  CheckpointWeightSource top_source(loader, precision);
  TransformerTopWeights top = build_top_weights(top_source, config);
  return QwenImageTransformer(config, precision, std::move(top), std::move(blocks), streaming);
}

TransformerBlockStream QwenImageTransformer::open_block_stream() const {
  if (!block_source_) {
    return TransformerBlockStream();
  }
  return TransformerBlockStream(block_source_, streaming_);
}

void QwenImageTransformer::run_blocks(const BlockContext& context,
                                      const TransformerForwardOptions& options, Tensor& img,
                                      Tensor& txt) const {
  if (!block_source_) {
    for (const TransformerBlockWeights& block : blocks_) {
      run_transformer_block(block, context, img, txt);
    }
    return;
  }
  TransformerBlockStream own_stream;
  TransformerBlockStream* stream = options.block_stream;
  if (stream == nullptr || stream->empty()) {
    own_stream = open_block_stream();
    // This call makes the stream's only pass, so the worker loads no block of a next pass.
    own_stream.limit_passes(1);
    stream = &own_stream;
  }
  for (std::int64_t index = 0; index < config_.num_layers; ++index) {
    const ResidentHandle<TransformerBlockWeights> block = stream->acquire(index);
    stream->report_compute(ResidencyEventKind::compute_start, index);
    run_transformer_block(*block, context, img, txt);
    stream->report_compute(ResidencyEventKind::compute_end, index);
  }
}

QwenImageTransformer QwenImageTransformer::random(const QwenImageTransformerConfig& config,
                                                  ModelPrecision precision, std::uint64_t seed) {
  RandomWeightSource source(seed, precision);
  return QwenImageTransformer(config, precision, source);
}

Tensor QwenImageTransformer::timestep_embedding(double sigma) const {
  if (!std::isfinite(sigma) || sigma < 0.0 || sigma > 1.0) {
    throw InvalidInputError(
        fmt::format("{}: sigma {} is outside [0, 1]; pass the scheduler's timestep divided by 1000",
                    kForward, sigma));
  }
  const DType dtype = precision_.compute_dtype;
  std::vector<float> features = timestep_sinusoid(model_sigma(sigma, dtype));
  if (config_.zero_cond_t) {
    const std::vector<float> clean = timestep_sinusoid(0.0f);
    features.insert(features.end(), clean.begin(), clean.end());
  }
  const auto rows = static_cast<std::int64_t>(features.size()) / kTimestepChannels;
  const Tensor sinusoid = Tensor::from_floats(features, {rows, kTimestepChannels}, dtype);
  Tensor hidden = top_.time_linear_1.forward(sinusoid);  // [R, D]
  cpu::silu_(hidden);
  return top_.time_linear_2.forward(hidden);  // [R, D]
}

Tensor QwenImageTransformer::output_head(Tensor img, const Tensor& modulation) const {
  const std::int64_t dim = config_.inner_dim();
  // [1, 2D]: (scale, shift) from the sigma row.
  const Tensor params = top_.norm_out.forward(modulation.narrow(0, 0, 1));
  const Tensor scale = params.select(0, 0).narrow(0, 0, dim);
  const Tensor shift = params.select(0, 0).narrow(0, dim, dim);
  const Tensor normalized = cpu::layer_norm_modulate(img, scale, shift);  // [S_img, D]
  img = Tensor();
  return top_.proj_out.forward(normalized);  // [S_img, patch^2 x out_channels]
}

Tensor QwenImageTransformer::forward(const TransformerInputs& inputs,
                                     const TransformerForwardOptions& options) const {
  const Tensor hidden_states = sample_rows(inputs.hidden_states, "hidden_states",
                                           config_.in_channels);  // [S_img, in_channels]
  const Tensor encoder_states = sample_rows(inputs.encoder_hidden_states, "encoder_hidden_states",
                                            config_.joint_attention_dim);
  const std::int64_t image_tokens = hidden_states.size(0);
  const std::int64_t text_tokens = encoder_states.size(0);
  if (text_tokens == 0) {
    throw InvalidInputError(fmt::format(
        "{}: encoder_hidden_states has no tokens; the transformer needs at least one text token",
        kForward));
  }
  check_img_shapes(inputs.img_shapes, image_tokens);
  if (options.attention_query_tile < 0 || options.mlp_token_chunk < 0) {
    throw InvalidInputError(
        fmt::format("{}: attention_query_tile ({}) and mlp_token_chunk ({}) must not be negative",
                    kForward, options.attention_query_tile, options.mlp_token_chunk));
  }
  const DType dtype = precision_.compute_dtype;

  // SiLU(temb) [R, D]: every consumer of temb (img_mod, txt_mod, norm_out) applies SiLU first.
  Tensor modulation = timestep_embedding(inputs.sigma);
  cpu::silu_(modulation);
  Tensor img = top_.img_in.forward(hidden_states.to(dtype));  // [S_img, D]
  Tensor txt;                                                 // [S_txt, D]
  {
    const Tensor normalized = cpu::rms_norm(encoder_states.to(dtype), top_.txt_norm);
    txt = top_.txt_in.forward(normalized);
  }

  {
    const RopeTables rope = rope_tables(inputs.img_shapes, text_tokens, config_);
    BlockContext context;
    context.modulation_input = modulation;
    context.rope = &rope;
    context.key_mask = joint_key_mask(inputs.text_mask, text_tokens, image_tokens);
    context.target_tokens = inputs.img_shapes.front().tokens();
    context.heads = config_.num_attention_heads;
    context.head_dim = config_.attention_head_dim;
    context.attention_query_tile = options.attention_query_tile;
    context.mlp_token_chunk = options.mlp_token_chunk;
    run_blocks(context, options, img, txt);
  }
  txt = Tensor();  // only the image stream feeds the output head
  const Tensor out = output_head(std::move(img), modulation);
  return inputs.hidden_states.dim() == 3 ? out.unsqueeze(0) : out;
}

}  // namespace ethereal
