// Tensor names of Qwen-Image transformer checkpoints in formats other than diffusers.
//
// ComfyUI single files use the diffusers names, sometimes under the prefix
// "model.diffusion_model.". ComfyUI saves Edit-2511 with an extra tensor
// "__index_timestep_zero__", a marker without weight data (0-dimensional or with no elements).
// Its presence means the model needs zero_cond_t.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "io/safetensors_checkpoint.h"

namespace ethereal {

inline constexpr std::string_view kComfyDiffusionModelPrefix = "model.diffusion_model.";
inline constexpr std::string_view kIndexTimestepZeroMarker = "__index_timestep_zero__";

// TensorNameMap for ComfyUI single files: strips an optional "model.diffusion_model." prefix
// and maps the zero_cond_t marker and the "scaled_fp8" marker of scaled fp8 files to nullopt.
// Scale tensors such as "<module>.scale_weight" keep their names; the loader reads them with
// their weight (quant/stored_weight.h).
std::optional<std::string> comfy_transformer_tensor_name(std::string_view file_name);

// True when the checkpoint has the marker, with or without the prefix: load it with
// zero_cond_t = true.
bool checkpoint_sets_zero_cond_t(const SafetensorsCheckpoint& checkpoint);

}  // namespace ethereal
