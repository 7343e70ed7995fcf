// The tiny default model: a Qwen-Image-Edit-2511 pipeline of the real architecture at toy
// sizes, with seeded random weights and a small byte-level BPE vocabulary, so that
// `ethereal edit` runs on a fresh machine without a download. Its weights are random: it proves
// the engine, not the art.
//
// Every code path of the real model is on: several transformer blocks with zero_cond_t, window
// and full attention in the vision tower, M-RoPE, GQA, a VAE with the real block structure and
// latent normalisation, and the real scheduler configuration.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/tensor.h"

namespace ethereal {

// Name and shape of one checkpoint tensor.
struct TensorSpec {
  std::string name;
  Shape shape;
};

// The tensors of each component in the diffusers / transformers layout, derived from its
// config.json document (the same keys the loaders read).
std::vector<TensorSpec> transformer_tensor_specs(const nlohmann::json& config);
std::vector<TensorSpec> vae_tensor_specs(const nlohmann::json& config);
// Older transformers names ("model.layers.N...", "visual..."), without lm_head.
std::vector<TensorSpec> text_encoder_tensor_specs(const nlohmann::json& config);

// Version of the tiny model's definition; part of its cache folder name, so a changed
// definition is written anew instead of reusing stale files.
inline constexpr int kTinyModelVersion = 1;

// Writes the tiny model as a diffusers directory at `directory` (which must not exist): the
// files go to a temporary sibling folder that is renamed at the end, so an interrupted write
// leaves nothing behind. Weights are bf16, drawn from a normal distribution seeded by `seed`.
void write_tiny_model(const std::filesystem::path& directory, std::uint64_t seed);

// The cache folder of the tiny default model ($XDG_CACHE_HOME or ~/.cache, then
// ethereal/models/tiny-qwen-image-edit-vN), written on first use.
std::filesystem::path default_model_directory();

}  // namespace ethereal
