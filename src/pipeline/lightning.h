// The Lightning recipe: a step-distilled LoRA (Qwen-Image-Lightning, 4 or 8 steps) used with
// CFG 1 (no negative pass) and the constant shift-3 schedule.
#pragma once

#include <filesystem>
#include <optional>

#include "pipeline/edit_pipeline.h"

namespace ethereal {

struct LightningRecipe {
  LoraFile lora;
  int steps = 8;
};

// The recipe for `lora_file`: the step count is `steps` when given, else 4 or 8 from the file
// name ("...4steps..."), else 8. Throws InvalidInputError when the file does not exist or the
// step count is not positive.
LightningRecipe lightning_recipe(const std::filesystem::path& lora_file,
                                 std::optional<int> steps = std::nullopt);

// Adds the recipe's LoRA to `options` and sets the request's steps, CFG scale 1 and scheduler.
void apply_lightning(const LightningRecipe& recipe, PipelineLoadOptions& options,
                     EditRequest& request);

}  // namespace ethereal
