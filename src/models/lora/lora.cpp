#include "models/lora/lora.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <set>
#include <system_error>

#include <fmt/format.h>

#include "io/safetensors.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"
#include "runtime/allocator.h"
#include "runtime/error.h"

namespace ethereal {

namespace {

enum class FactorKind { down, up, alpha };

struct ParsedKey {
  std::string module;
  FactorKind kind;
};

// Prefixes in front of the module name. "base_model.model." (PEFT) comes first when present,
// then at most one of the others.
constexpr std::string_view kPeftPrefix = "base_model.model.";
constexpr std::array<std::string_view, 3> kModelPrefixes = {"model.diffusion_model.",
                                                            "diffusion_model.", "transformer."};

struct SuffixKind {
  std::string_view suffix;
  FactorKind kind;
};
constexpr std::array<SuffixKind, 7> kSuffixes = {{
    {".lora_down.weight", FactorKind::down},
    {".lora_up.weight", FactorKind::up},
    {".alpha", FactorKind::alpha},
    {".lora_A.weight", FactorKind::down},
    {".lora_B.weight", FactorKind::up},
    {".lora_A.default.weight", FactorKind::down},
    {".lora_B.default.weight", FactorKind::up},
}};

std::string_view kind_name(FactorKind kind) {
  switch (kind) {
    case FactorKind::down: return "down (lora_down / lora_A)";
    case FactorKind::up: return "up (lora_up / lora_B)";
    case FactorKind::alpha: return "alpha";
  }
  return "";
}

std::string_view strip_prefixes(std::string_view key) {
  if (key.starts_with(kPeftPrefix)) {
    key.remove_prefix(kPeftPrefix.size());
  }
  for (std::string_view prefix : kModelPrefixes) {
    if (key.starts_with(prefix)) {
      key.remove_prefix(prefix.size());
      break;
    }
  }
  return key;
}

ParsedKey parse_key(const std::filesystem::path& file, std::string_view key) {
  const std::string_view name = strip_prefixes(key);
  if (name.starts_with("lora_unet_") || name.starts_with("lora_te")) {
    throw InvalidInputError(fmt::format(
        "{}: LoRA key \"{}\" uses kohya-style names (\"lora_unet_...\"), which are not supported; "
        "convert the file to diffusers module names (\"<module>.lora_down.weight\")",
        file.string(), key));
  }
  for (const SuffixKind& entry : kSuffixes) {
    if (name.size() > entry.suffix.size() && name.ends_with(entry.suffix)) {
      return {std::string(name.substr(0, name.size() - entry.suffix.size())), entry.kind};
    }
  }
  throw InvalidInputError(fmt::format(
      "{}: LoRA key \"{}\" is of an unsupported kind; expected \"<module>.lora_down.weight\", "
      "\"<module>.lora_up.weight\", \"<module>.alpha\", \"<module>.lora_A.weight\" or "
      "\"<module>.lora_B.weight\" (lora_mid, DoRA and full-difference keys are not supported)",
      file.string(), key));
}

// The keys of one module in one file.
struct ModuleKeys {
  std::string down;
  std::string up;
  std::string alpha;

  std::string& slot(FactorKind kind) {
    switch (kind) {
      case FactorKind::down: return down;
      case FactorKind::up: return up;
      case FactorKind::alpha: return alpha;
    }
    return alpha;
  }
};

// The factor stored under `key` as a contiguous f32 tensor from the current allocator. Checks
// that it is a 2-D float matrix with finite values (the values only outside a dry run).
Tensor read_factor(const SafetensorsFile& file, const std::string& key) {
  const TensorInfo& info = file.info(key);
  if (!info.dtype || !dtype_is_float(*info.dtype)) {
    throw InvalidInputError(
        fmt::format("{}: LoRA factor \"{}\" has dtype {}; a float dtype (F32, BF16, F16) is "
                    "expected",
                    file.path().string(), key, info.stored_dtype));
  }
  if (info.shape.size() != 2) {
    throw InvalidInputError(fmt::format(
        "{}: LoRA factor \"{}\" has shape {}; a 2-D matrix is expected (convolution LoRAs are "
        "not supported)",
        file.path().string(), key, shape_str(info.shape)));
  }
  Tensor factor = Tensor::empty(info.shape, DType::f32);
  factor.copy_from(file.tensor(key));
  if (factor.is_dry()) {
    return factor;
  }
  const float* values = factor.data_as<float>();
  const std::int64_t count = factor.numel();
  for (std::int64_t i = 0; i < count; ++i) {
    if (!std::isfinite(values[i])) {
      throw InvalidInputError(fmt::format(
          "{}: LoRA factor \"{}\" contains the non-finite value {} at element {}; the file is "
          "damaged or was saved from a diverged training run",
          file.path().string(), key, values[i], i));
    }
  }
  return factor;
}

float read_alpha(const SafetensorsFile& file, const std::string& key) {
  const TensorInfo& info = file.info(key);
  if (!info.dtype || shape_numel(info.shape) != 1) {
    throw InvalidInputError(
        fmt::format("{}: LoRA alpha \"{}\" is {}{}; a single number is expected",
                    file.path().string(), key, info.stored_dtype, shape_str(info.shape)));
  }
  const float alpha = file.tensor(key).to_floats().front();
  if (!std::isfinite(alpha)) {
    throw InvalidInputError(fmt::format("{}: LoRA alpha \"{}\" is {}; a finite number is expected",
                                        file.path().string(), key, alpha));
  }
  return alpha;
}

LoraLayer read_layer(const SafetensorsFile& file, const std::string& module, const ModuleKeys& keys,
                     float strength) {
  const std::string path = file.path().string();
  if (keys.down.empty() || keys.up.empty()) {
    // Name a key the file has, so the user can find the incomplete module.
    std::string present = keys.alpha;
    if (!keys.up.empty()) {
      present = keys.up;
    }
    if (!keys.down.empty()) {
      present = keys.down;
    }
    const std::string_view missing =
        keys.down.empty() ? "down (lora_down / lora_A)" : "up (lora_up / lora_B)";
    throw InvalidInputError(fmt::format(
        "{}: LoRA key \"{}\" has no {} partner for module \"{}\"; the file is incomplete", path,
        present, missing, module));
  }
  Tensor down = read_factor(file, keys.down);
  Tensor up = read_factor(file, keys.up);
  if (down.size(0) != up.size(1)) {
    throw InvalidInputError(fmt::format(
        "{}: LoRA key \"{}\" {} has rank {}, but \"{}\" {} has rank {}; up must be [out, rank] "
        "and down [rank, in]",
        path, keys.down, shape_str(down.shape()), down.size(0), keys.up, shape_str(up.shape()),
        up.size(1)));
  }
  if (down.size(0) == 0) {
    throw InvalidInputError(
        fmt::format("{}: LoRA key \"{}\" has rank 0; the file is damaged", path, keys.down));
  }
  const float alpha =
      keys.alpha.empty() ? static_cast<float>(down.size(0)) : read_alpha(file, keys.alpha);
  return LoraLayer{std::move(down), std::move(up), alpha, strength, file.path()};
}

void read_file_into(const LoraFile& lora_file,
                    std::map<std::string, std::vector<LoraLayer>, std::less<>>& layers) {
  const SafetensorsFile file = SafetensorsFile::open(lora_file.path);
  std::map<std::string, ModuleKeys> modules;
  for (const std::string& key : file.names()) {
    ParsedKey parsed = parse_key(file.path(), key);
    std::string& slot = modules[parsed.module].slot(parsed.kind);
    if (!slot.empty()) {
      throw InvalidInputError(fmt::format(
          "{}: LoRA keys \"{}\" and \"{}\" both store the {} of module \"{}\"; keep one of them",
          file.path().string(), slot, key, kind_name(parsed.kind), parsed.module));
    }
    slot = key;
  }
  if (modules.empty()) {
    throw InvalidInputError(
        fmt::format("{}: the file contains no LoRA tensors (\"<module>.lora_down.weight\" / "
                    "\"<module>.lora_up.weight\"); check that it is a LoRA file",
                    file.path().string()));
  }
  for (const auto& [module, keys] : modules) {
    layers[module].push_back(read_layer(file, module, keys, lora_file.strength));
  }
}

std::string lowercase(std::string_view text) {
  std::string result(text);
  std::transform(result.begin(), result.end(), result.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return result;
}

}  // namespace

LoraFile parse_lora_argument(std::string_view text) {
  const auto invalid = [&](std::string_view problem) {
    return InvalidInputError(
        fmt::format("invalid LoRA argument \"{}\": {}; expected FILE or FILE:SCALE, for example "
                    "lightning.safetensors:0.8",
                    text, problem));
  };
  if (text.empty()) {
    throw invalid("it is empty");
  }
  const std::size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) {
    return LoraFile{std::filesystem::path(text), 1.0f};
  }
  const std::string_view file = text.substr(0, colon);
  const std::string_view scale_text = text.substr(colon + 1);
  if (file.empty()) {
    throw invalid("the file name is empty");
  }
  float strength = 0.0f;
  const char* end = scale_text.data() + scale_text.size();
  const auto [stop, error] = std::from_chars(scale_text.data(), end, strength);
  if (scale_text.empty() || error != std::errc() || stop != end) {
    throw invalid(fmt::format("the strength \"{}\" is not a number", scale_text));
  }
  if (!std::isfinite(strength)) {
    throw invalid(fmt::format("the strength \"{}\" is not finite", scale_text));
  }
  return LoraFile{std::filesystem::path(file), strength};
}

float LoraLayer::scale() const {
  return strength * alpha / static_cast<float>(rank());
}

LoraSet LoraSet::read(const std::vector<LoraFile>& files) {
  LoraSet set;
  for (const LoraFile& file : files) {
    read_file_into(file, set.layers_);
  }
  return set;
}

std::vector<std::string> LoraSet::modules() const {
  std::vector<std::string> names;
  names.reserve(layers_.size());
  for (const auto& entry : layers_) {
    names.push_back(entry.first);
  }
  return names;
}

const std::vector<LoraLayer>* LoraSet::find(std::string_view module) const {
  const auto it = layers_.find(module);
  return it == layers_.end() ? nullptr : &it->second;
}

void LoraSet::check(const std::function<std::optional<std::pair<std::int64_t, std::int64_t>>(
                        std::string_view module)>& shape_of) const {
  constexpr std::size_t kMaxNamesListed = 5;
  std::vector<std::string> unmatched;
  std::string first_mismatch;
  for (const auto& [module, layers] : layers_) {
    const auto shape = shape_of(module);
    if (!shape) {
      unmatched.push_back(module);
      continue;
    }
    if (!first_mismatch.empty()) {
      continue;
    }
    for (const LoraLayer& layer : layers) {
      const std::int64_t out = layer.up.size(0);
      const std::int64_t in = layer.down.size(1);
      if (out != shape->first || in != shape->second) {
        first_mismatch = fmt::format(
            "{}: LoRA module \"{}\" changes a [{}, {}] weight (up {}, down {}), but the model's "
            "layer is [{}, {}] (out, in); the LoRA was made for a different model",
            layer.file.string(), module, out, in, shape_str(layer.up.shape()),
            shape_str(layer.down.shape()), shape->first, shape->second);
        break;
      }
    }
  }
  if (!unmatched.empty()) {
    const std::size_t listed_count = std::min(unmatched.size(), kMaxNamesListed);
    const std::vector<std::string> listed(unmatched.begin(), unmatched.begin() + listed_count);
    std::string more;
    if (unmatched.size() > listed_count) {
      more = fmt::format(" and {} more", unmatched.size() - listed_count);
    }
    throw InvalidInputError(fmt::format(
        "{} of {} LoRA modules match no linear layer of the model: \"{}\"{}; the LoRA was made "
        "for a different model or uses unsupported module names",
        unmatched.size(), layers_.size(), fmt::join(listed, "\", \""), more));
  }
  if (!first_mismatch.empty()) {
    throw InvalidInputError(first_mismatch);
  }
}

void LoraSet::merge_into(std::string_view module, Tensor& weight_f32) const {
  const std::vector<LoraLayer>* layers = find(module);
  if (layers == nullptr) {
    return;
  }
  if (!weight_f32.defined() || weight_f32.dtype() != DType::f32 || weight_f32.dim() != 2 ||
      !weight_f32.is_contiguous()) {
    throw Error(
        fmt::format("LoraSet::merge_into: the weight of \"{}\" must be a contiguous f32 "
                    "matrix, got {}",
                    module, weight_f32.defined() ? weight_f32.describe() : "undefined"));
  }
  const std::int64_t out = weight_f32.size(0);
  const std::int64_t in = weight_f32.size(1);
  for (const LoraLayer& layer : *layers) {
    if (layer.up.size(0) != out || layer.down.size(1) != in) {
      throw InvalidInputError(fmt::format(
          "{}: LoRA module \"{}\" changes a [{}, {}] weight, but the model's weight is [{}, {}] "
          "(out, in); the LoRA was made for a different model",
          layer.file.string(), module, layer.up.size(0), layer.down.size(1), out, in));
    }
  }
  // A dry run, or a dry weight or factor, allocates the same temporaries and adds nothing.
  for (const LoraLayer& layer : *layers) {
    const bool compute =
        !dry_run_active() && !weight_f32.is_dry() && !layer.up.is_dry() && !layer.down.is_dry();
    const float scale = layer.scale();
    for (std::int64_t first = 0; first < out; first += kMergeRowsPerChunk) {
      const std::int64_t count = std::min(kMergeRowsPerChunk, out - first);
      const Tensor update = cpu::matmul(layer.up.narrow(0, first, count), layer.down);
      if (compute) {
        Tensor target = weight_f32.narrow(0, first, count);
        cpu::add_scaled_(target, update, scale);
      }
    }
  }
}

LowRankAdapter LoraSet::adapter(std::string_view module) const {
  return adapter(module, DType::bf16);
}

LowRankAdapter LoraSet::adapter(std::string_view module, DType factor_dtype) const {
  if (factor_dtype != DType::f32 && factor_dtype != DType::bf16) {
    throw Error(fmt::format("LoraSet::adapter: factor dtype {} is not f32 or bf16",
                            dtype_name(factor_dtype)));
  }
  LowRankAdapter combined;
  const std::vector<LoraLayer>* layers = find(module);
  if (layers == nullptr) {
    return combined;
  }
  for (const LoraLayer& layer : *layers) {
    combined.append(
        LowRankAdapter(layer.down.to(factor_dtype), layer.up.to(factor_dtype), layer.scale()));
  }
  return combined;
}

void LoraSet::mark_applied(std::string_view module) const {
  applied_.emplace(module);
}

std::vector<std::string> LoraSet::unused_modules() const {
  std::vector<std::string> unused;
  for (const auto& entry : layers_) {
    if (!applied_.contains(entry.first)) {
      unused.push_back(entry.first);
    }
  }
  return unused;
}

std::size_t LoraSet::nbytes() const {
  std::size_t total = 0;
  for (const auto& entry : layers_) {
    for (const LoraLayer& layer : entry.second) {
      total += layer.down.nbytes() + layer.up.nbytes();
    }
  }
  return total;
}

std::optional<int> LoraSet::lightning_steps_from_name(const std::filesystem::path& path) {
  const std::string name = lowercase(path.filename().string());
  std::set<int> counts;
  for (std::size_t at = name.find("step"); at != std::string::npos;
       at = name.find("step", at + 1)) {
    std::size_t digits_end = at;
    if (digits_end > 0 && (name[digits_end - 1] == '-' || name[digits_end - 1] == '_')) {
      --digits_end;
    }
    std::size_t digits_begin = digits_end;
    while (digits_begin > 0 && std::isdigit(static_cast<unsigned char>(name[digits_begin - 1]))) {
      --digits_begin;
    }
    if (digits_begin == digits_end || digits_end - digits_begin > 3) {
      continue;
    }
    counts.insert(std::stoi(name.substr(digits_begin, digits_end - digits_begin)));
  }
  if (counts.size() != 1) {
    return std::nullopt;
  }
  const int steps = *counts.begin();
  if (steps == 4 || steps == 8) {
    return steps;
  }
  return std::nullopt;
}

}  // namespace ethereal
