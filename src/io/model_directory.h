// A model on disk in the diffusers directory layout:
//
//   model_index.json                     (optional when the directory holds one component)
//   transformer/config.json + diffusion_pytorch_model[.safetensors | -0000N-of-0000M.safetensors
//                                        + .safetensors.index.json]
//   vae/config.json + diffusion_pytorch_model.safetensors
//   text_encoder/config.json + model[.safetensors | shards + model.safetensors.index.json]
//   tokenizer/ (tokenizer.json, or vocab.json + merges.txt, + tokenizer_config.json)
//   processor/preprocessor_config.json   (optional: the Qwen2-VL processor's defaults apply)
//   scheduler/scheduler_config.json
//
// Every lookup checks that the folder or file exists and throws InvalidInputError naming the
// path and what to do when it does not.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "io/safetensors_checkpoint.h"

namespace ethereal {

enum class ModelComponent { transformer, vae, text_encoder, tokenizer, processor, scheduler };

std::string_view component_name(ModelComponent component);

class ModelDirectory {
 public:
  // Checks that `root` is a directory and, when model_index.json exists, that it parses.
  static ModelDirectory open(const std::filesystem::path& root);

  const std::filesystem::path& root() const { return root_; }
  bool has(ModelComponent component) const;
  // The component's folder; throws when it is missing.
  std::filesystem::path folder(ModelComponent component) const;
  // config.json, scheduler_config.json or preprocessor_config.json of the component; nullopt
  // only for the optional processor configuration.
  std::optional<std::filesystem::path> config_path(ModelComponent component) const;
  // The component's weights: the standard index or single file of the diffusers layout, or
  // the only safetensors checkpoint in the folder.
  SafetensorsCheckpoint open_weights(ModelComponent component) const;

 private:
  std::filesystem::path root_;
};

}  // namespace ethereal
