#include "models/weight_loader.h"

#include <algorithm>
#include <charconv>

#include <fmt/format.h>

#include "io/checkpoint_reader.h"
#include "quant/quantize.h"
#include "quant/stored_weight.h"
#include "runtime/allocator.h"
#include "runtime/error.h"

namespace ethereal {

std::optional<std::string> identity_tensor_name(std::string_view file_name) {
  return std::string(file_name);
}

std::int64_t numbered_module_index(std::string_view name, std::string_view prefix) {
  if (!name.starts_with(prefix)) {
    return -1;
  }
  const std::string_view rest = name.substr(prefix.size());
  std::int64_t index = -1;
  const auto [end, error] = std::from_chars(rest.data(), rest.data() + rest.size(), index);
  if (error != std::errc() || end == rest.data() || end == rest.data() + rest.size() ||
      *end != '.') {
    return -1;
  }
  return index;
}

WeightLoader::WeightLoader(const SafetensorsCheckpoint& checkpoint, TensorNameMap name_map,
                           std::string component, WeightLoadOptions options)
    : checkpoint_(checkpoint), component_(std::move(component)), options_(std::move(options)) {
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
  const Tensor source = stored_tensor(it->second);
  if (!result.is_dry()) {
    result.copy_from(source);
  }
  return result;
}

Tensor WeightLoader::take_optional(const std::string& name, const Shape& expected, DType dtype) {
  return contains(name) ? take(name, expected, dtype) : Tensor();
}

LinearLayer WeightLoader::linear(const std::string& prefix, std::int64_t out_features,
                                 std::int64_t in_features, bool bias, DType dtype) {
  auto it = file_name_of_.find(prefix + ".weight");
  if (it == file_name_of_.end()) {
    throw_missing(prefix + ".weight");
  }
  const std::string& file_name = it->second;
  const quant::StoredWeight stored = quant::inspect_stored_weight(checkpoint_, file_name);
  const Shape expected = {out_features, in_features};
  const Shape stored_shape = quant::stored_weight_shape(checkpoint_, file_name);
  if (stored_shape != expected) {
    throw InvalidInputError(
        fmt::format("{}: tensor \"{}\" has shape {} but the {} configuration expects {}",
                    checkpoint_.file_of(file_name).path().string(), file_name,
                    shape_str(stored_shape), component_, shape_str(expected)));
  }
  taken_.insert(prefix + ".weight");
  take_auxiliary_tensors(prefix, stored);
  Tensor bias_tensor;
  if (bias) {
    bias_tensor = take(prefix + ".bias", {out_features}, DType::f32);
  }

  const std::optional<quant::QuantFormat> format = options_.quant.format_of(component_, prefix);
  const bool has_lora = options_.lora != nullptr && options_.lora->find(prefix) != nullptr;
  // A weight stored in its target format is used as stored, and a LoRA on it stays a run-time
  // update. Merging would mean re-quantising, and the Qwen-Image-Lightning README reports grid
  // artefacts from LoRAs on its plain fp8 cast (scale 1). Otherwise a LoRA is merged into
  // bf16/f32 weights before packing, and into quantised weights before quantising (fresh
  // scales), unless the options ask for a run-time update.
  const bool use_as_stored = stored.is_quantized() && format == stored.format();
  const bool merge_lora = has_lora && !use_as_stored && (!format || !options_.lora_at_run_time);

  LinearLayer layer;
  if (use_as_stored) {
    // NOTE: quantised layers are read through the mapping even when options_.reader is set.
    layer = quant::QuantizedLinear(quant::read_stored_weight(checkpoint_, stored), bias_tensor);
  } else if (!stored.is_quantized() && stored.scale_tensor.empty() && !format && !merge_lora) {
    // Read straight from the mapped file into the packed layout; only the packed copy stays
    // resident.
    layer = dry_run_active() && options_.reader == nullptr
                ? cpu::PackedLinear::allocate(out_features, in_features, dtype, bias_tensor)
                : cpu::PackedLinear(stored_tensor(file_name), bias_tensor, dtype);
  } else {
    // Quantise, pack or merge one tensor at a time. A plain float weight is read from the mapped
    // file directly. Other stored forms are decoded into one temporary matrix first, freed on
    // return: f32 for a merge, else bf16 or the packing dtype.
    const DType decoded_dtype = merge_lora ? DType::f32 : (format ? DType::bf16 : dtype);
    const bool plain_float = !stored.is_quantized() && stored.scale_tensor.empty();
    Tensor source = options_.reader != nullptr && plain_float
                        ? stored_tensor(file_name)
                        : quant::decode_stored_weight(checkpoint_, stored, decoded_dtype);
    if (merge_lora) {
      if (source.dtype() != DType::f32 || source.storage()->is_external()) {
        Tensor merged = Tensor::empty(expected, DType::f32);
        if (!merged.is_dry()) {
          merged.copy_from(source);
        }
        source = std::move(merged);
      }
      options_.lora->merge_into(prefix, source);
      options_.lora->mark_applied(prefix);
    }
    if (format) {
      quant::QuantizeOptions quantize_options;
      quantize_options.fp8_scales = options_.quant.fp8_scales;
      layer =
          quant::QuantizedLinear(quant::quantize(source, *format, quantize_options), bias_tensor);
    } else {
      layer = cpu::PackedLinear(source, bias_tensor, dtype);
    }
  }
  release_file_pages(file_name);
  if (has_lora && !merge_lora) {
    layer.set_adapter(options_.lora->adapter(prefix));
    options_.lora->mark_applied(prefix);
  }
  return layer;
}

void WeightLoader::take_auxiliary_tensors(const std::string& prefix,
                                          const quant::StoredWeight& stored) {
  // Name maps rewrite only the module path, so "<file module>.<suffix>" maps to
  // "<prefix>.<suffix>".
  const std::size_t file_module_length =
      stored.weight_tensor.size() - std::string_view(".weight").size();
  for (const std::string& file_name : stored.auxiliary_tensors) {
    const std::string canonical = prefix + file_name.substr(file_module_length);
    if (file_name_of_.count(canonical) != 0) {
      taken_.insert(canonical);
    }
  }
}

Tensor WeightLoader::stored_tensor(const std::string& file_name) const {
  return options_.reader != nullptr ? options_.reader->read(file_name)
                                    : checkpoint_.tensor(file_name);
}

void WeightLoader::release_file_pages(const std::string& file_name) const {
  if (!options_.release_file_pages || dry_run_active()) {
    return;
  }
  const TensorInfo& stored = checkpoint_.info(file_name);
  checkpoint_.file_of(file_name).mapping().advise_dontneed(stored.data_begin, stored.nbytes());
}

std::optional<std::pair<std::int64_t, std::int64_t>> WeightLoader::linear_shape(
    std::string_view module) const {
  auto it = file_name_of_.find(std::string(module) + ".weight");
  if (it == file_name_of_.end()) {
    return std::nullopt;
  }
  const Shape shape = quant::stored_weight_shape(checkpoint_, it->second);
  if (shape.size() != 2) {
    return std::nullopt;
  }
  return std::pair{shape[0], shape[1]};
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
