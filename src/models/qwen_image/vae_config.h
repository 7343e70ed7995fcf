// Configuration of the Qwen-Image VAE (diffusers AutoencoderKLQwenImage, the Wan-2.1 video VAE
// architecture) as read from a diffusers vae/config.json.
//
// Channel layout, from base_dim and dim_mult (real model: 96 and [1, 2, 4, 4]):
//   encoder stage s maps encoder_dims[s] -> encoder_dims[s + 1] with num_res_blocks residual
//   blocks, then halves the resolution unless it is the last stage;
//   decoder stage s maps decoder_in_dim(s) -> decoder_dims[s + 1] with num_res_blocks + 1
//   residual blocks, then doubles the resolution and halves the channels unless it is the last
//   stage. That is why decoder_in_dim(s) is decoder_dims[s] / 2 for s > 0.
// The spatial compression factor is 2^(dim_mult.size() - 1) (8 for the real model).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ethereal {

struct QwenImageVaeConfig {
  std::int64_t base_dim = 96;
  std::int64_t z_dim = 16;
  std::vector<std::int64_t> dim_mult = {1, 2, 4, 4};
  std::int64_t num_res_blocks = 2;
  // Spatial scales with extra attention blocks in the encoder. Only the empty list (attention
  // in the mid blocks alone, the Qwen-Image setting) is supported.
  std::vector<double> attn_scales;
  // Per down-sampling stage: whether the video model also halves time there. Single images
  // never run the temporal convolutions, but "3d" stages own time_conv weights.
  std::vector<bool> temperal_downsample = {false, true, true};
  // Training-time dropout; inactive at inference.
  double dropout = 0.0;
  std::int64_t input_channels = 3;
  // Per-channel statistics of the latent space (z_dim values each), used by
  // QwenImageVae::normalize_latents / denormalize_latents.
  std::vector<float> latents_mean;
  std::vector<float> latents_std;

  // The configuration of the published Qwen-Image / Edit VAE (the diffusers defaults).
  static QwenImageVaeConfig qwen_image();

  // Reads a diffusers config.json document. Missing keys take the diffusers defaults; unknown
  // keys are ignored. Wrong types and invalid or unsupported values are InvalidInputError
  // naming `source` and the key.
  static QwenImageVaeConfig from_json(const nlohmann::json& document, const std::string& source);
  static QwenImageVaeConfig from_file(const std::filesystem::path& path);

  // Throws InvalidInputError naming `source` and the key when a value is out of range or the
  // lists do not fit together.
  void validate(const std::string& source) const;

  std::int64_t stage_count() const { return static_cast<std::int64_t>(dim_mult.size()); }
  // Pixels per latent along each axis: 2^(stage_count() - 1).
  std::int64_t spatial_factor() const { return std::int64_t{1} << (stage_count() - 1); }
  // base_dim * [1, dim_mult...]: the encoder's channels before and after each stage.
  std::vector<std::int64_t> encoder_dims() const;
  // base_dim * [dim_mult.back(), reversed dim_mult...]: the decoder's nominal channels.
  std::vector<std::int64_t> decoder_dims() const;
  // Channels entering decoder stage `stage` (decoder_dims()[stage], halved after an upsample).
  std::int64_t decoder_in_dim(std::int64_t stage) const;
  // Channels of the mid blocks (the deepest stage).
  std::int64_t mid_dim() const { return base_dim * dim_mult.back(); }
  // Whether down-sampling stage `stage` (0 ... stage_count() - 2) is a "3d" resample with a
  // time_conv weight; the decoder's up-sampling stage s mirrors stage stage_count() - 2 - s.
  bool encoder_stage_is_temporal(std::int64_t stage) const;
  bool decoder_stage_is_temporal(std::int64_t stage) const;
};

}  // namespace ethereal
