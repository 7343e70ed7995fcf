#include "models/qwen_image/vae.h"

#include <optional>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "kernels/cpu/conv.h"
#include "models/qwen_image/vae_blocks.h"
#include "models/qwen_image/vae_tensor_names.h"
#include "models/qwen_image/vae_tensor_ops.h"
#include "models/weight_loader.h"
#include "runtime/error.h"

namespace ethereal {

class QwenImageVae::Encoder {
 public:
  Encoder(VaeLayerFactory& factory, const QwenImageVaeConfig& config)
      : conv_in_(factory.causal_conv("encoder.conv_in", config.base_dim, config.input_channels, 3)),
        stages_(build_stages(factory, config)),
        mid_(factory, vae_names::mid_block("encoder"), config.mid_dim()),
        head_(factory, "encoder", config.mid_dim(), 2 * config.z_dim),
        // Only the mean rows of quant_conv: mean = first z_dim output channels.
        quant_conv_(factory.causal_conv("quant_conv", 2 * config.z_dim, 2 * config.z_dim, 1,
                                        config.z_dim)) {}

  // [1, C_in, H, W] -> posterior mean [1, z_dim, H/8, W/8].
  Tensor forward(const Tensor& image, std::int64_t query_tile) const {
    Tensor x = conv_in_.forward(image);  // [1, base_dim, H, W]
    for (const Stage& stage : stages_) {
      for (const VaeResidualBlock& block : stage.resnets) {
        x = block.forward(std::move(x));  // [1, dims[s + 1], H_s, W_s]
      }
      if (stage.downsample) {
        x = stage.downsample->forward(std::move(x));  // [1, dims[s + 1], H_s / 2, W_s / 2]
      }
    }
    x = mid_.forward(std::move(x), query_tile);  // [1, mid_dim, H/8, W/8]
    x = head_.forward(std::move(x));             // [1, 2 z_dim, H/8, W/8]
    return quant_conv_.forward(x);               // [1, z_dim, H/8, W/8]
  }

 private:
  struct Stage {
    std::vector<VaeResidualBlock> resnets;
    std::optional<VaeDownsample> downsample;
  };

  // diffusers keeps the stages in one flat list, down_blocks.N: num_res_blocks residual
  // blocks per stage, then a resampler unless the stage is the last.
  static std::vector<Stage> build_stages(VaeLayerFactory& factory,
                                         const QwenImageVaeConfig& config) {
    const std::vector<std::int64_t> dims = config.encoder_dims();
    std::vector<Stage> stages;
    std::int64_t index = 0;
    for (std::int64_t s = 0; s < config.stage_count(); ++s) {
      Stage stage;
      std::int64_t in_channels = dims[static_cast<std::size_t>(s)];
      const std::int64_t out_channels = dims[static_cast<std::size_t>(s) + 1];
      for (std::int64_t r = 0; r < config.num_res_blocks; ++r) {
        stage.resnets.emplace_back(factory, vae_names::encoder_down_block(index++), in_channels,
                                   out_channels);
        in_channels = out_channels;
      }
      if (s + 1 < config.stage_count()) {
        stage.downsample.emplace(factory, vae_names::encoder_down_block(index++), out_channels,
                                 config.encoder_stage_is_temporal(s));
      }
      stages.push_back(std::move(stage));
    }
    return stages;
  }

  cpu::Conv2d conv_in_;
  std::vector<Stage> stages_;
  VaeMidBlock mid_;
  VaeHead head_;
  cpu::Conv2d quant_conv_;
};

class QwenImageVae::Decoder {
 public:
  Decoder(VaeLayerFactory& factory, const QwenImageVaeConfig& config)
      : post_quant_conv_(factory.causal_conv("post_quant_conv", config.z_dim, config.z_dim, 1)),
        conv_in_(factory.causal_conv("decoder.conv_in", config.mid_dim(), config.z_dim, 3)),
        mid_(factory, vae_names::mid_block("decoder"), config.mid_dim()),
        stages_(build_stages(factory, config)),
        head_(factory, "decoder", config.decoder_dims().back(), config.input_channels) {}

  // [1, z_dim, h, w] -> [1, C_in, 8h, 8w], not clamped.
  Tensor forward(const Tensor& latents, std::int64_t query_tile) const {
    Tensor x = post_quant_conv_.forward(latents);  // [1, z_dim, h, w]
    x = conv_in_.forward(x);                       // [1, mid_dim, h, w]
    x = mid_.forward(std::move(x), query_tile);
    for (const Stage& stage : stages_) {
      for (const VaeResidualBlock& block : stage.resnets) {
        x = block.forward(std::move(x));  // [1, dims[s + 1], h_s, w_s]
      }
      if (stage.upsample) {
        x = stage.upsample->forward(std::move(x));  // [1, dims[s + 1] / 2, 2 h_s, 2 w_s]
      }
    }
    return head_.forward(std::move(x));  // [1, C_in, 8h, 8w]
  }

 private:
  struct Stage {
    std::vector<VaeResidualBlock> resnets;
    std::optional<VaeUpsample> upsample;
  };

  // Stage s: num_res_blocks + 1 residual blocks from decoder_in_dim(s) to dims[s + 1], then an
  // upsampler to dims[s + 1] / 2 channels unless the stage is the last.
  static std::vector<Stage> build_stages(VaeLayerFactory& factory,
                                         const QwenImageVaeConfig& config) {
    const std::vector<std::int64_t> dims = config.decoder_dims();
    std::vector<Stage> stages;
    for (std::int64_t s = 0; s < config.stage_count(); ++s) {
      Stage stage;
      std::int64_t in_channels = config.decoder_in_dim(s);
      const std::int64_t out_channels = dims[static_cast<std::size_t>(s) + 1];
      for (std::int64_t r = 0; r <= config.num_res_blocks; ++r) {
        stage.resnets.emplace_back(factory, vae_names::decoder_resnet(s, r), in_channels,
                                   out_channels);
        in_channels = out_channels;
      }
      if (s + 1 < config.stage_count()) {
        stage.upsample.emplace(factory, vae_names::decoder_upsampler(s), out_channels,
                               config.decoder_stage_is_temporal(s));
      }
      stages.push_back(std::move(stage));
    }
    return stages;
  }

  cpu::Conv2d post_quant_conv_;
  cpu::Conv2d conv_in_;
  VaeMidBlock mid_;
  std::vector<Stage> stages_;
  VaeHead head_;
};

QwenImageVae::QwenImageVae(const QwenImageVaeConfig& config, VaeWeightSource& weights,
                           ModelPrecision precision, VaeParts parts)
    : config_(config), precision_(precision) {
  config_.validate("QwenImageVae");
  VaeLayerFactory factory(weights, precision);
  if (parts.encoder) {
    encoder_ = std::make_unique<Encoder>(factory, config_);
  }
  if (parts.decoder) {
    decoder_ = std::make_unique<Decoder>(factory, config_);
  }
}

QwenImageVae::~QwenImageVae() = default;
QwenImageVae::QwenImageVae(QwenImageVae&&) noexcept = default;
QwenImageVae& QwenImageVae::operator=(QwenImageVae&&) noexcept = default;

QwenImageVae QwenImageVae::load(const SafetensorsCheckpoint& checkpoint,
                                const QwenImageVaeConfig& config, ModelPrecision precision,
                                VaeParts parts) {
  const VaeTensorFormat format = detect_vae_tensor_format(checkpoint.names());
  WeightLoader loader(checkpoint, vae_tensor_name_map(format, config), "vae");
  if (!parts.encoder) {
    loader.ignore_prefix("encoder.");
    loader.ignore_prefix("quant_conv.");
  }
  if (!parts.decoder) {
    loader.ignore_prefix("decoder.");
    loader.ignore_prefix("post_quant_conv.");
  }
  CheckpointVaeWeights weights(loader);
  QwenImageVae vae(config, weights, precision, parts);
  loader.finish();
  return vae;
}

QwenImageVae QwenImageVae::load_directory(const std::filesystem::path& directory,
                                          ModelPrecision precision, VaeParts parts) {
  const QwenImageVaeConfig config = QwenImageVaeConfig::from_file(directory / "config.json");
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(directory);
  return load(checkpoint, config, precision, parts);
}

namespace {

// Throws InvalidInputError unless x is [1, channels, H, W] in f32 or bf16 with H and W
// positive multiples of `multiple`.
void check_input(const char* operation, const char* what, const Tensor& x, std::int64_t channels,
                 std::int64_t multiple) {
  const bool float_dtype = x.defined() && (x.dtype() == DType::f32 || x.dtype() == DType::bf16);
  const bool shape_ok = x.defined() && x.dim() == 4 && x.size(0) == 1 && x.size(1) == channels &&
                        x.size(2) > 0 && x.size(3) > 0 && x.size(2) % multiple == 0 &&
                        x.size(3) % multiple == 0;
  if (!float_dtype || !shape_ok) {
    throw InvalidInputError(fmt::format(
        "VAE {}: {} must be an f32 or bf16 tensor [1, {}, H, W] with H and W positive "
        "multiples of {}, got {}",
        operation, what, channels, multiple, x.defined() ? x.describe() : "an undefined tensor"));
  }
}

}  // namespace

Tensor QwenImageVae::encode(const Tensor& image, const VaeMemoryOptions& options) const {
  if (!encoder_) {
    throw Error("QwenImageVae::encode: the encoder was not loaded (VaeParts::encoder is false)");
  }
  const std::int64_t factor = config_.spatial_factor();
  check_input("encode", "the image", image, config_.input_channels, factor);
  const Tensor x = image.contiguous().to(precision_.compute_dtype);  // [1, C_in, H, W]
  const std::int64_t query_tile = options.attention_query_tile;
  if (!options.tiling.enabled) {
    return encoder_->forward(x, query_tile);
  }
  return run_tiled(x, TileGrid::for_encode(options.tiling, factor),
                   [&](const Tensor& tile) { return encoder_->forward(tile, query_tile); });
}

Tensor QwenImageVae::decode(const Tensor& latents, const VaeMemoryOptions& options) const {
  if (!decoder_) {
    throw Error("QwenImageVae::decode: the decoder was not loaded (VaeParts::decoder is false)");
  }
  check_input("decode", "the latents", latents, config_.z_dim, 1);
  const Tensor z = latents.contiguous().to(precision_.compute_dtype);  // [1, z_dim, h, w]
  const std::int64_t query_tile = options.attention_query_tile;
  Tensor image;
  if (!options.tiling.enabled) {
    image = decoder_->forward(z, query_tile);
  } else {
    image = run_tiled(z, TileGrid::for_decode(options.tiling, config_.spatial_factor()),
                      [&](const Tensor& tile) { return decoder_->forward(tile, query_tile); });
  }
  vae_ops::clamp_(image, -1.0f, 1.0f);
  return image;  // [1, C_in, 8h, 8w]
}

Tensor QwenImageVae::normalize_latents(const Tensor& mean) const {
  check_input("normalize_latents", "the posterior mean", mean, config_.z_dim, 1);
  return vae_ops::subtract_divide_channels(mean.contiguous(), config_.latents_mean,
                                           config_.latents_std);
}

Tensor QwenImageVae::denormalize_latents(const Tensor& latents) const {
  check_input("denormalize_latents", "the latents", latents, config_.z_dim, 1);
  return vae_ops::multiply_add_channels(latents.contiguous(), config_.latents_std,
                                        config_.latents_mean);
}

}  // namespace ethereal
