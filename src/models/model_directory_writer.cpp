#include "models/model_directory_writer.h"

#include <unistd.h>

#include <fstream>
#include <string>

#include "models/tokenizer/tiny_vocabulary.h"
#include "models/tokenizer/tokenizer_files.h"
#include "runtime/error.h"

namespace ethereal {

namespace fs = std::filesystem;

namespace {

// Text the generated vocabulary learns its merges from: the prompt template and common words.
constexpr std::string_view kVocabularySample =
    "Describe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the "
    "image. Generate a new image that meets the user's requirements while maintaining "
    "consistency with the original input where appropriate. Picture 1: Picture 2: Picture 3: "
    "system user assistant Make the sky blue and add a red hat to the cat. Turn the photo into "
    "a watercolor painting, remove the background, replace the text with a sign that says "
    "hello. The dog is sitting on the grass next to a tree in the sunny park.";

constexpr std::size_t kVocabularyMerges = 362;

}  // namespace

void write_json_file(const fs::path& path, const nlohmann::json& document) {
  std::ofstream out(path);
  out << document.dump(2) << "\n";
  if (!out) {
    throw IoError("cannot write " + path.string());
  }
}

BpeVocabulary generated_model_vocabulary(std::optional<std::int32_t> first_added_id) {
  BpeVocabulary vocabulary = build_tiny_bpe_vocabulary(kVocabularySample, kVocabularyMerges);
  if (first_added_id) {
    vocabulary.added_tokens = qwen2_vl_added_tokens(*first_added_id);
  }
  return vocabulary;
}

void write_model_directory(const fs::path& directory, const ModelDirectoryFiles& files,
                           std::string_view model) {
  if (fs::exists(directory)) {
    throw InvalidInputError(directory.string() + " already exists; " + std::string(model) +
                            " is written only into a new folder");
  }
  const fs::path staging = directory.parent_path() /
                           (directory.filename().string() + ".tmp." + std::to_string(::getpid()));
  fs::remove_all(staging);
  try {
    for (const char* folder :
         {"transformer", "vae", "text_encoder", "tokenizer", "processor", "scheduler"}) {
      fs::create_directories(staging / folder);
    }
    write_tokenizer_json(files.vocabulary, staging / "tokenizer" / "tokenizer.json");
    write_json_file(staging / "model_index.json", files.model_index);
    write_json_file(staging / "transformer" / "config.json", files.transformer_config);
    write_json_file(staging / "vae" / "config.json", files.vae_config);
    write_json_file(staging / "text_encoder" / "config.json", files.text_encoder_config);
    write_json_file(staging / "scheduler" / "scheduler_config.json", files.scheduler_config);
    write_json_file(staging / "processor" / "preprocessor_config.json", files.processor_config);
    files.write_weights(staging);
    fs::rename(staging, directory);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    throw;
  }
}

}  // namespace ethereal
