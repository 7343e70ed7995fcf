// Full-size reference models: the configuration documents of published checkpoints, and sparse
// copies of their model directories for the memory planner.
//
// A sparse copy has every file of the diffusers layout, with the published tensor names, shapes
// and dtypes (bf16), sharded like the published checkpoint. Each safetensors data region is a
// hole: zero bytes that take no disk space on file systems with sparse files. So a dry run
// (runtime/allocator.h) loads and runs the real architecture at full size, with allocations of
// the real sizes, without the tens of gigabytes of weights. The tokenizer is the small
// generated vocabulary of the tiny model with the Qwen2.5-VL added tokens at their published
// ids, so prompts encode to more tokens than with the published vocabulary. The embedding
// table keeps its published 152,064 rows.
//
// Running a sparse copy for real gives a meaningless image: every weight is zero.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "models/model_directory_writer.h"
#include "models/tiny_model.h"

namespace ethereal {

// Names of the reference models: "qwen-image-edit-2511".
std::vector<std::string> reference_model_names();

// The configuration documents and tokenizer vocabulary of reference model `name`, with a
// weight writer that writes sparse checkpoints. Throws InvalidInputError for an unknown name,
// listing the known ones.
ModelDirectoryFiles reference_model_files(std::string_view name);

// The tensors of `component` ("transformer", "text_encoder" or "vae") as stored in the
// published checkpoint, all bf16. The text encoder's include lm_head, which the published
// files store and the engine skips. Throws InvalidInputError for an unknown name or component.
std::vector<TensorSpec> reference_model_tensor_specs(std::string_view name,
                                                     std::string_view component);

// Bytes of the tensor data of `component` (the sum over reference_model_tensor_specs, bf16):
// the checkpoint files' size without their headers.
std::uint64_t reference_model_weight_bytes(std::string_view name, std::string_view component);

// Writes the sparse copy of reference model `name` at `directory`, which must not exist. The
// files go to a temporary sibling folder that is renamed at the end. The files' apparent size
// is the published size up to the headers (about 58 GB for qwen-image-edit-2511), so a file
// system without sparse files would need that much free space.
void write_sparse_model(const std::filesystem::path& directory, std::string_view name);

}  // namespace ethereal
