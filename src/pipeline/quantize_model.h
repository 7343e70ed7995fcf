// Writing a copy of a model directory with quantised linear weights (`ethereal quantize`).
//
// The output is a complete diffusers model directory. The transformer's and the text encoder's
// checkpoints are rewritten. Every linear layer that quant::QuantPolicy quantises is stored
// quantised: the transformer blocks, the text encoder's language-model layers and vision
// blocks, minus the `keep` modules. Every other tensor is copied as it is. A layer that the
// source stores quantised (quant/stored_weight.h) is decoded first, and written as bf16 when
// it stays unquantised. Every other file and folder (configurations, tokenizer,
// scheduler, processor, VAE) is copied unchanged; names starting with '.' are skipped.
//
// Stored layouts, readable by WeightLoader (docs/quantization.md):
//   fp8_e4m3  "<m>.weight" F8_E4M3 [out, in] and "<m>.scale_weight" F32 [] (one scale per tensor),
//             plus an empty top-level "scaled_fp8" marker: the ComfyUI "scaled fp8" form.
//   int8      "<m>.weight" I8 [out, in] and "<m>.weight_scale" F32 [out].
//   nf4       "<m>.weight" U8 [out, in / 2] and "<m>.weight_absmax", "<m>.weight_absmax_scale",
//             "<m>.weight_absmax_map", "<m>.weight_absmax_offset". A layer with an odd
//             in_features stays bf16.
// Each file's metadata records the format and the program that wrote it.
//
// Memory: tensors stream one at a time from the mapped source into the safetensors writer, and
// the source pages are released (MADV_DONTNEED) after each read. The writer orders tensors by
// element size, so a layer's f32 scales are written long before its 1-byte values. Each layer is
// therefore quantised twice, and quantisation is deterministic, so the parts agree. At most one
// layer's quantised weight is held at a time.
//
// Everything is written into a temporary sibling directory, renamed to the output at the end; a
// failure removes it and leaves an existing output untouched.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "quant/quant_format.h"

namespace ethereal {

// Tensor bytes per output shard; a checkpoint up to this size is written as one file.
inline constexpr std::uint64_t kQuantizedShardBytes = 5'000'000'000;

struct QuantizeModelOptions {
  std::filesystem::path model;   // source model directory
  std::filesystem::path output;  // directory to create
  quant::QuantFormat format = quant::QuantFormat::fp8_e4m3;
  // Modules kept unquantised, matched as in quant::QuantPolicy::keep (a canonical module name
  // or a prefix of whole name parts, such as "transformer_blocks.0"). Each must match a
  // quantisable layer of the transformer or the text encoder.
  std::vector<std::string> keep;
  // Replaces an existing output directory (only after the new one is complete).
  bool force = false;
  std::uint64_t max_shard_bytes = kQuantizedShardBytes;
};

struct QuantizedComponentReport {
  std::string component;  // "transformer" or "text_encoder"
  std::int64_t tensors = 0;
  std::int64_t quantized_layers = 0;
  std::uint64_t source_bytes = 0;  // tensor bytes read
  std::uint64_t output_bytes = 0;  // tensor bytes written
};

struct QuantizeModelReport {
  std::vector<QuantizedComponentReport> components;
  double seconds = 0.0;
};

// Writes options.output as described at the top of this file. Throws InvalidInputError when the
// source is not a model directory or has neither a transformer nor a text encoder, or when a
// `keep` entry matches no layer. It also throws InvalidInputError when the output exists and
// `force` is not set, when the output is the source or contains it, and when the output's
// parent directory is missing or not writable. Errors of the stored-weight reader pass through.
QuantizeModelReport quantize_model(const QuantizeModelOptions& options);

}  // namespace ethereal
