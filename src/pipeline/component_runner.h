// One model component on tensors from a safetensors file, for parity checks against other
// implementations. Tensor names are documented in docs/run-component.md; each input is looked
// up by its plain name and, failing that, with an "input." prefix, so reference files that
// keep inputs and expected outputs together can be passed as they are.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "models/model_precision.h"

namespace ethereal {

// "transformer", "vae_encode", "vae_decode", "vision", "text_encoder".
const std::vector<std::string>& runnable_components();

// Loads only `component` from `model_directory` (a diffusers model directory, or one that
// holds just that component's folder), runs it on `input`, and writes the outputs to
// `output` (atomically). Throws InvalidInputError for an unknown component, a missing input
// tensor or a shape the component cannot take.
void run_component(const std::filesystem::path& model_directory, std::string_view component,
                   const std::filesystem::path& input, const std::filesystem::path& output,
                   ModelPrecision precision);

}  // namespace ethereal
