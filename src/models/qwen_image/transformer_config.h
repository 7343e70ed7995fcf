// Configuration of the Qwen-Image diffusion transformer (diffusers
// QwenImageTransformer2DModel), read from the transformer's config.json.
//
// The defaults are the values of every released Qwen-Image-Edit model (60 dual-stream blocks,
// 24 heads of 128, joint attention dimension 3584). Edit-2511 differs only by zero_cond_t.
// Flags of other family members that change the computation (guidance_embeds,
// use_additional_t_cond, use_layer3d_rope) are rejected when true, since their weights and
// code paths are not implemented.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

namespace ethereal {

struct QwenImageTransformerConfig {
  std::int64_t patch_size = 2;
  std::int64_t in_channels = 64;   // packed latent channels per token: 16 x patch^2
  std::int64_t out_channels = 16;  // latent channels; proj_out emits out_channels x patch^2
  std::int64_t num_layers = 60;
  std::int64_t attention_head_dim = 128;
  std::int64_t num_attention_heads = 24;
  std::int64_t joint_attention_dim = 3584;  // hidden size of the text encoder
  // RoPE dimensions of the (frame, height, width) axes; each even, summing to the head dim.
  std::array<std::int64_t, 3> axes_dims_rope = {16, 56, 56};
  // Edit-2511: reference-image tokens are modulated with the embedding of timestep 0.
  bool zero_cond_t = false;

  // D, the width of both streams: heads x head_dim.
  std::int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  // Width of the MLP hidden layer: 4 D.
  std::int64_t mlp_dim() const { return 4 * inner_dim(); }
  // Values per output token: patch^2 x out_channels.
  std::int64_t output_dim() const { return patch_size * patch_size * out_channels; }

  // Reads a diffusers config.json document. Missing keys keep the defaults above, a null
  // out_channels means in_channels (as in diffusers), unknown keys are ignored. Wrong types,
  // invalid values and unsupported features are InvalidInputError naming `source` and the key.
  static QwenImageTransformerConfig from_json(const nlohmann::json& document,
                                              const std::string& source);
  static QwenImageTransformerConfig from_file(const std::filesystem::path& path);

  // Throws InvalidInputError naming `source` when a value is out of range or the RoPE axes
  // do not split the head dimension.
  void validate(const std::string& source) const;
};

}  // namespace ethereal
