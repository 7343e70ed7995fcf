// Tensor names of Qwen2.5-VL checkpoints.
//
// Canonical names are the older transformers layout, which the Qwen2.5-VL releases were
// published with: "model.embed_tokens.weight", "model.layers.N.*", "model.norm.weight" for the
// language model and "visual.*" for the vision tower. Newer transformers releases save the
// same tensors as "model.language_model.*" and "model.visual.*". Both layouts may carry
// "lm_head.weight", which the text encoder skips because it returns hidden states, and scaled
// fp8 files a "scaled_fp8" marker, which is skipped too.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "io/safetensors_checkpoint.h"
#include "models/weight_loader.h"

namespace ethereal {

enum class Qwen25VlTensorLayout {
  legacy,  // model.layers.N.*, visual.*
  nested,  // model.language_model.layers.N.*, model.visual.*
};

// TensorNameMap of the older layout: names are canonical, lm_head and the marker are dropped.
std::optional<std::string> qwen25vl_legacy_tensor_name(std::string_view file_name);
// TensorNameMap of the newer layout: "model.language_model." becomes "model.",
// "model.visual." becomes "visual.", lm_head and the marker are dropped.
std::optional<std::string> qwen25vl_nested_tensor_name(std::string_view file_name);

// The layout of a checkpoint's names: nested when any name starts with
// "model.language_model." or "model.visual.", else legacy. Throws InvalidInputError naming
// the checkpoint and one name of each kind when it mixes both layouts.
Qwen25VlTensorLayout detect_qwen25vl_layout(const SafetensorsCheckpoint& checkpoint);

TensorNameMap qwen25vl_tensor_name_map(Qwen25VlTensorLayout layout);

}  // namespace ethereal
