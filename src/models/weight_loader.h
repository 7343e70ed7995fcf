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

#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "io/safetensors_checkpoint.h"
#include "kernels/cpu/linear.h"
#include "runtime/tensor.h"

namespace ethereal {

// Maps a tensor name as stored in a file to its canonical name, or nullopt for a tensor
// that the engine never uses (for example lm_head or a format marker). One mapping per
// checkpoint format lives next to the model that reads it.
using TensorNameMap = std::function<std::optional<std::string>(std::string_view file_name)>;

// The identity mapping: file names are canonical names.
std::optional<std::string> identity_tensor_name(std::string_view file_name);

class WeightLoader {
 public:
  // `component` names the part in messages ("transformer", "vae", ...).
  WeightLoader(const SafetensorsCheckpoint& checkpoint, TensorNameMap name_map,
               std::string component);

  bool contains(const std::string& name) const;
  // Shape and dtype of a canonical tensor as stored; throws like take() when missing.
  const TensorInfo& info(const std::string& name) const;

  // The tensor `name` with shape `expected`, converted to `dtype`.
  Tensor take(const std::string& name, const Shape& expected, DType dtype);
  // take() when the checkpoint has the tensor, an undefined tensor otherwise.
  Tensor take_optional(const std::string& name, const Shape& expected, DType dtype);

  // A packed linear layer from "<prefix>.weight" [out, in] and, when `bias` is true,
  // "<prefix>.bias" [out]; packed in `dtype` (bf16 or f32).
  cpu::PackedLinear linear(const std::string& prefix, std::int64_t out_features,
                           std::int64_t in_features, bool bias, DType dtype);

  // Marks canonical names starting with `prefix` as used without loading them.
  void ignore_prefix(const std::string& prefix);

  // Throws InvalidInputError listing up to five checkpoint tensors that were neither taken nor
  // ignored.
  void finish() const;

  const SafetensorsCheckpoint& checkpoint() const { return checkpoint_; }
  const std::string& component() const { return component_; }

 private:
  [[noreturn]] void throw_missing(const std::string& name) const;

  const SafetensorsCheckpoint& checkpoint_;
  std::string component_;
  std::map<std::string, std::string, std::less<>> file_name_of_;  // canonical -> file name
  std::set<std::string, std::less<>> taken_;
  std::vector<std::string> ignored_prefixes_;
};

}  // namespace ethereal
