#include "io/model_directory.h"

#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "runtime/error.h"

namespace ethereal {

namespace fs = std::filesystem;

std::string_view component_name(ModelComponent component) {
  switch (component) {
    case ModelComponent::transformer: return "transformer";
    case ModelComponent::vae: return "vae";
    case ModelComponent::text_encoder: return "text_encoder";
    case ModelComponent::tokenizer: return "tokenizer";
    case ModelComponent::processor: return "processor";
    case ModelComponent::scheduler: return "scheduler";
  }
  return "unknown";
}

ModelDirectory ModelDirectory::open(const fs::path& root) {
  std::error_code error;
  if (!fs::is_directory(root, error)) {
    throw InvalidInputError(fmt::format(
        "model directory {} does not exist or is not a directory; pass --model with a diffusers "
        "model directory (see docs/models.md)",
        root.string()));
  }
  const fs::path index = root / "model_index.json";
  if (fs::exists(index)) {
    std::ifstream in(index);
    try {
      const nlohmann::json document = nlohmann::json::parse(in);
      if (!document.is_object()) {
        throw InvalidInputError(index.string() + ": expected a JSON object");
      }
    } catch (const nlohmann::json::parse_error& parse_error) {
      throw InvalidInputError(
          fmt::format("{}: invalid JSON at byte {}; restore the file from the "
                      "model's original download",
                      index.string(), parse_error.byte));
    }
  }
  ModelDirectory directory;
  directory.root_ = root;
  return directory;
}

bool ModelDirectory::has(ModelComponent component) const {
  return fs::is_directory(root_ / component_name(component));
}

fs::path ModelDirectory::folder(ModelComponent component) const {
  const fs::path path = root_ / component_name(component);
  if (!fs::is_directory(path)) {
    throw InvalidInputError(fmt::format(
        "model directory {} has no {}/ folder; the model is incomplete (download the missing "
        "folder, or point --model at a complete diffusers model directory)",
        root_.string(), component_name(component)));
  }
  return path;
}

std::optional<fs::path> ModelDirectory::config_path(ModelComponent component) const {
  const char* file_name = "config.json";
  if (component == ModelComponent::scheduler) {
    file_name = "scheduler_config.json";
  } else if (component == ModelComponent::processor) {
    if (!has(component)) {
      return std::nullopt;
    }
    const fs::path path = folder(component) / "preprocessor_config.json";
    return fs::exists(path) ? std::optional<fs::path>(path) : std::nullopt;
  }
  const fs::path path = folder(component) / file_name;
  if (!fs::is_regular_file(path)) {
    throw InvalidInputError(fmt::format("{} is missing; the {} folder needs its configuration file",
                                        path.string(), component_name(component)));
  }
  return path;
}

SafetensorsCheckpoint ModelDirectory::open_weights(ModelComponent component) const {
  const fs::path directory = folder(component);
  const std::string base =
      component == ModelComponent::text_encoder ? "model" : "diffusion_pytorch_model";
  for (const fs::path& candidate :
       {directory / (base + ".safetensors.index.json"), directory / (base + ".safetensors")}) {
    if (fs::exists(candidate)) {
      return SafetensorsCheckpoint::open(candidate);
    }
  }
  return SafetensorsCheckpoint::open(directory);
}

}  // namespace ethereal
