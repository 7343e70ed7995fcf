// Writing generated model directories in the diffusers layout (see io/model_directory.h): the
// tiny default model and the sparse full-size reference models share this code.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>

#include "models/tokenizer/bpe_vocabulary.h"

namespace ethereal {

// The files of a generated model directory.
struct ModelDirectoryFiles {
  nlohmann::json model_index;
  nlohmann::json transformer_config;
  nlohmann::json vae_config;
  nlohmann::json text_encoder_config;
  nlohmann::json scheduler_config;
  nlohmann::json processor_config;
  // Written as tokenizer/tokenizer.json.
  BpeVocabulary vocabulary;
  // Writes the weights of the transformer, the VAE and the text encoder into the given folder,
  // whose component subfolders exist already.
  std::function<void(const std::filesystem::path& folder)> write_weights;
};

// Writes `files` as a model directory at `directory`, which must not exist. The files go to a
// temporary sibling folder that is renamed at the end, so an interrupted write leaves nothing
// behind. `model` names the model in the error for an existing directory ("the tiny model").
void write_model_directory(const std::filesystem::path& directory, const ModelDirectoryFiles& files,
                           std::string_view model);

// Writes `document` as indented JSON with a final newline. Throws IoError when writing fails.
void write_json_file(const std::filesystem::path& path, const nlohmann::json& document);

// The vocabulary of the generated models: 362 byte-level BPE merges learned from the edit
// prompt template and common words, then the 22 Qwen2.5-VL added tokens. These are numbered
// from `first_added_id` (151643 in the released vocabulary), or right after the learned tokens
// when it is nullopt.
BpeVocabulary generated_model_vocabulary(std::optional<std::int32_t> first_added_id);

}  // namespace ethereal
