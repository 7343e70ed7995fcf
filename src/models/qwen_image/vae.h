// The Qwen-Image VAE (diffusers AutoencoderKLQwenImage, the Wan-2.1 video VAE architecture with
// weights fine-tuned by Qwen) for single images.
//
// Frame axis: diffusers works on video tensors [B, C, T, H, W] and the pipeline passes T = 1.
// This API drops that axis: images are [1, C, H, W] and latents [1, z_dim, H / 8, W / 8]. For
// one frame every causal 3-D convolution is a 2-D convolution with its last temporal kernel
// slice, and the temporal resampling convolutions never run (see vae_weights.h).
//
// encode: image in [-1, 1] -> conv_in -> down stages (residual blocks, stride-2 resamplers) ->
//   mid block (residual, attention, residual) -> RMS_norm, SiLU, conv_out -> quant_conv ->
//   posterior mean (the first z_dim of the 2 z_dim channels; the log-variance half is never
//   computed, as image editing uses the mean).
// decode: latents -> post_quant_conv -> conv_in -> mid block -> up stages (residual blocks,
//   nearest x2 + conv) -> RMS_norm, SiLU, conv_out -> clamp to [-1, 1].
// The latent normalisation of the pipeline, z = (mean - latents_mean) / latents_std before the
// transformer and z * latents_std + latents_mean before decode, is kept separate:
// normalize_latents / denormalize_latents.
//
// Memory: activations are freed as soon as they are dead. The largest live tensors are the
// full-resolution stages (96 channels x H x W for the real model) and the convolution's NHWC
// copies. Tiled encode/decode (VaeTiling) bounds them by the tile size instead. Everything runs
// in dry-run mode with the same allocations as a real run.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>

#include "io/safetensors_checkpoint.h"
#include "models/model_precision.h"
#include "models/qwen_image/vae_config.h"
#include "models/qwen_image/vae_tiling.h"
#include "models/qwen_image/vae_weights.h"
#include "runtime/tensor.h"

namespace ethereal {

// Working-memory knobs of one encode or decode.
struct VaeMemoryOptions {
  VaeTiling tiling;
  // Most query rows per work item of the mid-block attention (cpu::AttentionOptions::
  // max_query_tile); 0 selects the kernel's default.
  std::int64_t attention_query_tile = 0;
};

// Which halves of the VAE to build. An edit needs the encoder for the reference images and
// the decoder for the result, and a memory plan may keep only one of them loaded at a time.
struct VaeParts {
  bool encoder = true;
  bool decoder = true;
};

class QwenImageVae {
 public:
  // Loads `parts` from a checkpoint with diffusers or Wan / ComfyUI tensor names (detected from
  // the names). Every checkpoint tensor must belong to the configuration (the unused
  // time_conv weights and the parts not built are accepted and not loaded).
  static QwenImageVae load(const SafetensorsCheckpoint& checkpoint,
                           const QwenImageVaeConfig& config, ModelPrecision precision,
                           VaeParts parts = {});
  // Loads a diffusers vae/ directory: config.json and the safetensors weights beside it.
  static QwenImageVae load_directory(const std::filesystem::path& directory,
                                     ModelPrecision precision, VaeParts parts = {});

  // Builds the model from `weights`, asking for each tensor once, in a fixed order.
  QwenImageVae(const QwenImageVaeConfig& config, VaeWeightSource& weights, ModelPrecision precision,
               VaeParts parts = {});
  ~QwenImageVae();
  QwenImageVae(QwenImageVae&&) noexcept;
  QwenImageVae& operator=(QwenImageVae&&) noexcept;

  // image [1, input_channels, H, W] (f32 or bf16, values in [-1, 1], H and W positive
  // multiples of 8) -> posterior mean [1, z_dim, H / 8, W / 8] in the compute dtype.
  Tensor encode(const Tensor& image, const VaeMemoryOptions& options = {}) const;
  // latents [1, z_dim, h, w] in VAE space (denormalised) -> image [1, input_channels, 8h, 8w]
  // in [-1, 1], compute dtype. A tiled decode clamps after blending the unclamped tiles.
  Tensor decode(const Tensor& latents, const VaeMemoryOptions& options = {}) const;

  // (mean - latents_mean[c]) / latents_std[c] per channel, in mean's dtype (computed in f32).
  Tensor normalize_latents(const Tensor& mean) const;
  // latents * latents_std[c] + latents_mean[c] per channel, the inverse.
  Tensor denormalize_latents(const Tensor& latents) const;

  bool has_encoder() const { return encoder_ != nullptr; }
  bool has_decoder() const { return decoder_ != nullptr; }
  const QwenImageVaeConfig& config() const { return config_; }
  const ModelPrecision& precision() const { return precision_; }

 private:
  class Encoder;
  class Decoder;

  QwenImageVaeConfig config_;
  ModelPrecision precision_;
  std::unique_ptr<Encoder> encoder_;
  std::unique_ptr<Decoder> decoder_;
};

}  // namespace ethereal
