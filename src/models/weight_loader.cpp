#include "models/weight_loader.h"

#include <algorithm>

#include <fmt/format.h>

#include "runtime/allocator.h"
#include "runtime/error.h"

namespace ethereal {

std::optional<std::string> identity_tensor_name(std::string_view file_name) {
  return std::string(file_name);
}

WeightLoader::WeightLoader(const SafetensorsCheckpoint& checkpoint, TensorNameMap name_map,
                           std::string component)
    : checkpoint_(checkpoint), component_(std::move(component)) {
  for (const std::string& file_name : checkpoint_.names()) {
    std::optional<std::string> canonical = name_map(file_name);
    if (!canonical) {
      continue;
    }
    auto [it, inserted] = file_name_of_.emplace(*canonical, file_name);
    if (!inserted) {
      throw InvalidInputError(fmt::format(
          "{}: tensors \"{}\" and \"{}\" both map to the {} weight \"{}\"; the checkpoint mixes "
          "two naming schemes, keep one",
          checkpoint_.path().string(), it->second, file_name, component_, *canonical));
    }
  }
}

bool WeightLoader::contains(const std::string& name) const {
  return file_name_of_.count(name) != 0;
}

void WeightLoader::throw_missing(const std::string& name) const {
  throw InvalidInputError(fmt::format(
      "{}: the {} weight \"{}\" is missing; the checkpoint does not match the configuration "
      "(wrong model, or a truncated or partial download)",
      checkpoint_.path().string(), component_, name));
}

const TensorInfo& WeightLoader::info(const std::string& name) const {
  auto it = file_name_of_.find(name);
  if (it == file_name_of_.end()) {
    throw_missing(name);
  }
  return checkpoint_.info(it->second);
}

Tensor WeightLoader::take(const std::string& name, const Shape& expected, DType dtype) {
  auto it = file_name_of_.find(name);
  if (it == file_name_of_.end()) {
    throw_missing(name);
  }
  const TensorInfo& stored = checkpoint_.info(it->second);
  if (stored.shape != expected) {
    throw InvalidInputError(
        fmt::format("{}: tensor \"{}\" has shape {} but the {} configuration expects {}",
                    checkpoint_.file_of(it->second).path().string(), it->second,
                    shape_str(stored.shape), component_, shape_str(expected)));
  }
  if (!stored.dtype || !dtype_is_float(*stored.dtype)) {
    throw InvalidInputError(fmt::format("{}: tensor \"{}\" has dtype {}; a float dtype is expected",
                                        checkpoint_.file_of(it->second).path().string(), it->second,
                                        stored.stored_dtype));
  }
  taken_.insert(name);
  Tensor result = Tensor::empty(expected, dtype);
  if (!result.is_dry()) {
    result.copy_from(checkpoint_.tensor(it->second));
  }
  return result;
}

Tensor WeightLoader::take_optional(const std::string& name, const Shape& expected, DType dtype) {
  return contains(name) ? take(name, expected, dtype) : Tensor();
}

cpu::PackedLinear WeightLoader::linear(const std::string& prefix, std::int64_t out_features,
                                       std::int64_t in_features, bool bias, DType dtype) {
  // The weight is read straight from the mapped file into the packed layout; only the
  // packed copy stays resident.
  auto it = file_name_of_.find(prefix + ".weight");
  if (it == file_name_of_.end()) {
    throw_missing(prefix + ".weight");
  }
  const TensorInfo& stored = checkpoint_.info(it->second);
  const Shape expected = {out_features, in_features};
  if (stored.shape != expected) {
    throw InvalidInputError(
        fmt::format("{}: tensor \"{}\" has shape {} but the {} configuration expects {}",
                    checkpoint_.file_of(it->second).path().string(), it->second,
                    shape_str(stored.shape), component_, shape_str(expected)));
  }
  taken_.insert(prefix + ".weight");
  Tensor bias_tensor;
  if (bias) {
    bias_tensor = take(prefix + ".bias", {out_features}, DType::f32);
  }
  if (dry_run_active()) {
    return cpu::PackedLinear::allocate(out_features, in_features, dtype, bias_tensor);
  }
  return cpu::PackedLinear(checkpoint_.tensor(it->second), bias_tensor, dtype);
}

void WeightLoader::ignore_prefix(const std::string& prefix) {
  ignored_prefixes_.push_back(prefix);
}

void WeightLoader::finish() const {
  std::vector<std::string> unexpected;
  for (const auto& [canonical, file_name] : file_name_of_) {
    if (taken_.count(canonical) != 0) {
      continue;
    }
    const bool ignored =
        std::any_of(ignored_prefixes_.begin(), ignored_prefixes_.end(),
                    [&](const std::string& prefix) { return canonical.rfind(prefix, 0) == 0; });
    if (!ignored) {
      unexpected.push_back(file_name);
    }
  }
  if (unexpected.empty()) {
    return;
  }
  const std::size_t shown = std::min<std::size_t>(unexpected.size(), 5);
  throw InvalidInputError(fmt::format(
      "{}: {} tensor(s) do not belong to the {} configuration, for example \"{}\"; check that "
      "the config file matches the weights",
      checkpoint_.path().string(), unexpected.size(), component_,
      fmt::join(unexpected.begin(), unexpected.begin() + static_cast<std::ptrdiff_t>(shown),
                "\", \"")));
}

}  // namespace ethereal
