// Helpers shared by the transformer tests: the diffusers tensor list of a configuration
// (written independently of the loader, from the published layout) and patterned tensors.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "models/qwen_image/transformer_config.h"
#include "runtime/tensor.h"

namespace ethereal::transformer_test {

// The diffusers tensors of `config` with their shapes: 13 top-level tensors, 32 per block.
inline std::vector<std::pair<std::string, Shape>> diffusers_tensor_shapes(
    const QwenImageTransformerConfig& config) {
  const std::int64_t d = config.inner_dim();
  const std::int64_t head = config.attention_head_dim;
  std::vector<std::pair<std::string, Shape>> shapes = {
      {"img_in.weight", {d, config.in_channels}},
      {"img_in.bias", {d}},
      {"txt_norm.weight", {config.joint_attention_dim}},
      {"txt_in.weight", {d, config.joint_attention_dim}},
      {"txt_in.bias", {d}},
      {"time_text_embed.timestep_embedder.linear_1.weight", {d, 256}},
      {"time_text_embed.timestep_embedder.linear_1.bias", {d}},
      {"time_text_embed.timestep_embedder.linear_2.weight", {d, d}},
      {"time_text_embed.timestep_embedder.linear_2.bias", {d}},
      {"norm_out.linear.weight", {2 * d, d}},
      {"norm_out.linear.bias", {2 * d}},
      {"proj_out.weight", {config.patch_size * config.patch_size * config.out_channels, d}},
      {"proj_out.bias", {config.patch_size * config.patch_size * config.out_channels}},
  };
  for (std::int64_t block = 0; block < config.num_layers; ++block) {
    const std::string p = "transformer_blocks." + std::to_string(block) + ".";
    for (const char* mod : {"img_mod.1", "txt_mod.1"}) {
      shapes.push_back({p + mod + ".weight", {6 * d, d}});
      shapes.push_back({p + mod + ".bias", {6 * d}});
    }
    for (const char* linear :
         {"attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj",
          "attn.add_v_proj", "attn.to_out.0", "attn.to_add_out"}) {
      shapes.push_back({p + linear + ".weight", {d, d}});
      shapes.push_back({p + linear + ".bias", {d}});
    }
    for (const char* norm :
         {"attn.norm_q", "attn.norm_k", "attn.norm_added_q", "attn.norm_added_k"}) {
      shapes.push_back({p + norm + ".weight", {head}});
    }
    for (const char* mlp : {"img_mlp", "txt_mlp"}) {
      shapes.push_back({p + mlp + ".net.0.proj.weight", {4 * d, d}});
      shapes.push_back({p + mlp + ".net.0.proj.bias", {4 * d}});
      shapes.push_back({p + mlp + ".net.2.weight", {d, 4 * d}});
      shapes.push_back({p + mlp + ".net.2.bias", {d}});
    }
  }
  return shapes;
}

// Deterministic small values for a tensor of `shape`.
inline Tensor pattern_tensor(const Shape& shape, float seed, DType dtype = DType::f32) {
  std::vector<float> values(static_cast<std::size_t>(shape_numel(shape)));
  for (std::size_t i = 0; i < values.size(); ++i) {
    values[i] =
        0.05f * static_cast<float>(((i * 37 + static_cast<std::size_t>(seed * 13)) % 41)) - 1.0f;
  }
  return Tensor::from_floats(values, shape, dtype);
}

}  // namespace ethereal::transformer_test
