// Weight bytes of a model per component and weight format, from the safetensors headers
// alone (no tensor data is read).
//
// The weight format changes only the quantisable linear weights (2-D ".weight" tensors that
// quant::is_quantizable_linear accepts: the linear layers of the transformer blocks and of the
// text encoder's language-model layers and vision blocks). Per weight [out, in]:
//   bf16      2 bytes per element;
//   fp8_e4m3  1 byte per element + one f32 scale per output channel;
//   int8      1 byte per element + one f32 scale per output channel;
//   nf4       half a byte per element (rounded up) + one byte per block of 64 elements + one
//             f32 per 256 blocks + the 256-entry f32 code map (1 KiB).
// These are the sizes of quant::QuantizedWeight with per-channel fp8 scales. Every other
// tensor counts with its stored bytes; tensors the engine never loads (lm_head, format
// markers) are left out.
//
// This is an estimate of resident weights only: the planner's dry run adds allocator rounding,
// conversions at load (for example f32 VAE biases) and working memory.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "quant/quant_format.h"

namespace ethereal::memory {

// Weight format names, as in the keys of ComponentWeightBytes::bytes_per_format.
inline constexpr std::array<std::string_view, 4> kWeightFormatNames = {"bf16", "fp8_e4m3", "nf4",
                                                                       "int8"};

struct ComponentWeightBytes {
  std::string component;  // "transformer", "text_encoder" or "vae"
  // Bytes of the tensors the engine loads, as stored in the checkpoint.
  std::uint64_t stored_bytes = 0;
  std::uint64_t tensor_count = 0;
  std::uint64_t quantizable_tensor_count = 0;
  std::uint64_t quantizable_element_count = 0;
  // Keyed by the names of kWeightFormatNames.
  std::map<std::string, std::uint64_t> bytes_per_format;
};

struct ModelMemoryEstimate {
  std::vector<ComponentWeightBytes> components;  // those present, in the order listed above

  // Sum over the components; throws InvalidInputError naming `format` when it is not one of
  // kWeightFormatNames.
  std::uint64_t total_bytes(std::string_view format) const;
  nlohmann::json to_json() const;
};

// Bytes of one linear weight [out_features, in_features] in a quantised format.
std::uint64_t quantized_weight_bytes(quant::QuantFormat format, std::int64_t out_features,
                                     std::int64_t in_features);

// Opens the model directory and the safetensors headers of its transformer, text_encoder and
// vae (each when present). Throws InvalidInputError for a missing directory or a malformed
// checkpoint, naming the file.
ModelMemoryEstimate estimate_model_memory(const std::filesystem::path& model_directory);

}  // namespace ethereal::memory
