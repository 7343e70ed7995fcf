// Loading one model component's weights from a checkpoint.
//
// Models ask for tensors by canonical name (the diffusers / transformers names) with the
// shape their configuration implies; the loader finds the tensor in the checkpoint through
// the component's name mapping, checks its shape, and copies it into allocator-backed memory
// in the requested dtype, so resident weights are counted like every other buffer. In a dry
// run nothing is read: tensors are allocated with their real sizes from the checkpoint
// headers.
//
// Every tensor of the checkpoint must be either taken or explicitly ignored; finish() reports
// the rest as unexpected. Errors name the file, the tensor, the expected and actual shape.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "io/safetensors_checkpoint.h"
#include "models/linear_layer.h"
#include "models/lora/lora.h"
#include "quant/quant_policy.h"
#include "quant/stored_weight.h"
#include "runtime/tensor.h"

namespace ethereal {

class CheckpointReader;

// Maps a tensor name as stored in a file to its canonical name, or nullopt for a tensor
// that the engine never uses (for example lm_head or a format marker). One mapping per
// checkpoint format lives next to the model that reads it.
using TensorNameMap = std::function<std::optional<std::string>(std::string_view file_name)>;

// The identity mapping: file names are canonical names.
std::optional<std::string> identity_tensor_name(std::string_view file_name);

// Returns N for a tensor name "<prefix>N.<rest>" (for example "transformer_blocks.3.attn.to_q"
// with prefix "transformer_blocks."), or -1 when the name has another form.
std::int64_t numbered_module_index(std::string_view name, std::string_view prefix);

// How linear layers are loaded: their weight format and the LoRA to apply.
struct WeightLoadOptions {
  // The format of each linear layer; the default keeps the model's weight dtype.
  quant::QuantPolicy quant;
  // LoRA factors, or null. Must outlive the loader.
  const LoraSet* lora = nullptr;
  // Keeps a LoRA as a run-time low-rank update on quantised layers instead of merging it into
  // the weights before quantising. Layers kept in bf16 or f32 always get the LoRA merged.
  bool lora_at_run_time = false;
  // Gives the file pages of each linear weight back to the kernel (MADV_DONTNEED) once it is
  // packed or quantised, so the mapped checkpoint does not stay resident.
  bool release_file_pages = true;
  // Reads float tensors with pread into allocator memory instead of viewing the file mapping,
  // so a file truncated after it was opened is an IoError naming the tensor, not a SIGBUS
  // (sequential offload streams blocks this way). Null views the mapping. Must outlive the
  // loader. Weights stored quantised are still read through the mapping.
  const CheckpointReader* reader = nullptr;
};

class WeightLoader {
 public:
  // `component` names the part in messages and selects the quantisation rule ("transformer",
  // "text_encoder", "vae").
  WeightLoader(const SafetensorsCheckpoint& checkpoint, TensorNameMap name_map,
               std::string component, WeightLoadOptions options = {});

  bool contains(const std::string& name) const;
  // Shape and dtype of a canonical tensor as stored; throws like take() when missing.
  const TensorInfo& info(const std::string& name) const;

  // The tensor `name` with shape `expected`, converted to `dtype`.
  Tensor take(const std::string& name, const Shape& expected, DType dtype);
  // take() when the checkpoint has the tensor, an undefined tensor otherwise.
  Tensor take_optional(const std::string& name, const Shape& expected, DType dtype);

  // The linear layer "<prefix>.weight" [out, in] with, when `bias` is true, "<prefix>.bias"
  // [out]. The options decide its format: packed in `dtype` (bf16 or f32), or quantised from the
  // mapped file one tensor at a time, so the whole model is never held in bf16. A LoRA on the
  // layer is merged first or attached as a run-time update (see WeightLoadOptions). The weight
  // may be stored quantised (quant/stored_weight.h): in the target format it is used as stored
  // and a LoRA always becomes a run-time update; otherwise it is decoded, then packed or
  // re-quantised.
  LinearLayer linear(const std::string& prefix, std::int64_t out_features, std::int64_t in_features,
                     bool bias, DType dtype);

  // {out_features, in_features} of the 2-D tensor "<module>.weight" (decoded, for nf4), or
  // nullopt when the checkpoint has no such tensor or it is not 2-D (for matching LoRA modules).
  std::optional<std::pair<std::int64_t, std::int64_t>> linear_shape(std::string_view module) const;

  // Marks canonical names starting with `prefix` as used without loading them.
  void ignore_prefix(const std::string& prefix);

  // Throws InvalidInputError listing up to five checkpoint tensors that were neither taken nor
  // ignored.
  void finish() const;

  const SafetensorsCheckpoint& checkpoint() const { return checkpoint_; }
  const std::string& component() const { return component_; }

 private:
  [[noreturn]] void throw_missing(const std::string& name) const;
  // The stored tensor `file_name`: a view of the mapping, or a copy read by options_.reader
  // (allocated but not read in a dry run).
  Tensor stored_tensor(const std::string& file_name) const;
  // Marks the scale and metadata tensors of the layer `prefix` as used.
  void take_auxiliary_tensors(const std::string& prefix, const quant::StoredWeight& stored);
  void release_file_pages(const std::string& file_name) const;

  const SafetensorsCheckpoint& checkpoint_;
  std::string component_;
  WeightLoadOptions options_;
  std::map<std::string, std::string, std::less<>> file_name_of_;  // canonical -> file name
  std::set<std::string, std::less<>> taken_;
  std::vector<std::string> ignored_prefixes_;
};

}  // namespace ethereal
