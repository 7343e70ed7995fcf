#include "pipeline/lightning.h"

#include <fmt/format.h>

#include "runtime/error.h"

namespace ethereal {

LightningRecipe lightning_recipe(const std::filesystem::path& lora_file, std::optional<int> steps) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(lora_file, error)) {
    throw InvalidInputError(
        fmt::format("--lightning {}: no such file; pass the Lightning LoRA safetensors file",
                    lora_file.string()));
  }
  if (steps && *steps < 1) {
    throw InvalidInputError(fmt::format("--steps must be at least 1, got {}", *steps));
  }
  LightningRecipe recipe;
  recipe.lora = {lora_file, 1.0f};
  recipe.steps = steps.value_or(LoraSet::lightning_steps_from_name(lora_file).value_or(8));
  return recipe;
}

void apply_lightning(const LightningRecipe& recipe, PipelineLoadOptions& options,
                     EditRequest& request) {
  options.loras.push_back(recipe.lora);
  request.steps = recipe.steps;
  request.cfg_scale = 1.0;
  request.scheduler = FlowMatchSchedulerConfig::lightning();
}

}  // namespace ethereal
