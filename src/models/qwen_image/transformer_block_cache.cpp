#include "models/qwen_image/transformer_block_cache.h"

#include <algorithm>
#include <cstdlib>
#include <set>
#include <span>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "io/safetensors_writer.h"
#include "quant/quantized_linear.h"
#include "runtime/allocator.h"
#include "runtime/error.h"

namespace ethereal {

namespace {

constexpr const char* kKeyField = "ethereal_cache_key";
constexpr const char* kComponent = "transformer";

// The tensors of one built block, in build order, as the cache stores them.
struct BuiltBlock {
  std::vector<std::pair<std::string, Tensor>> parts;
  std::map<std::string, TransformerBlockCache::LinearPlan, std::less<>> linears;
  std::vector<std::string> layouts;  // packed layout of each packed weight
};

void add_linear(const std::string& prefix, const LinearLayer& layer, BuiltBlock& block) {
  TransformerBlockCache::LinearPlan plan;
  plan.has_adapter = !layer.adapter().empty();
  Tensor bias;
  if (layer.is_quantized()) {
    const quant::QuantizedLinear& quantized = layer.quantized();
    const quant::QuantizedWeight& weight = quantized.weight();
    plan.packed = false;
    plan.format = weight.format;
    block.parts.emplace_back(prefix + ".values", weight.values);
    if (weight.scales.defined()) {
      block.parts.emplace_back(prefix + ".scales", weight.scales);
    }
    if (weight.format == quant::QuantFormat::nf4) {
      block.parts.emplace_back(prefix + ".nf4_absmax_codes", weight.nf4.absmax_codes);
      block.parts.emplace_back(prefix + ".nf4_group_scales", weight.nf4.group_scales);
      block.parts.emplace_back(prefix + ".nf4_code_map", weight.nf4.code_map);
      const float offset = weight.nf4.offset;
      block.parts.emplace_back(prefix + ".nf4_offset",
                               Tensor::from_floats(std::span(&offset, 1), {1}));
    }
    bias = quantized.bias();
  } else {
    const cpu::PackedLinear& packed = layer.packed();
    plan.packed_dtype = packed.packed_dtype();
    block.parts.emplace_back(prefix + ".packed", packed.packed_weight());
    block.layouts.push_back(fmt::format("{}x{} {} {} {}", packed.in_features(),
                                        packed.out_features(), dtype_name(packed.packed_dtype()),
                                        packed.layout().format, packed.layout().bytes));
    bias = packed.bias();
  }
  if (bias.defined()) {
    block.parts.emplace_back(prefix + ".bias", bias);
  }
  block.linears.emplace(prefix, plan);
}

// Forwards to another source and keeps every tensor it hands out.
class RecordingSource final : public TransformerWeightSource {
 public:
  explicit RecordingSource(TransformerWeightSource& inner) : inner_(inner) {}

  LinearLayer linear(const std::string& prefix, std::int64_t out_features,
                     std::int64_t in_features) override {
    LinearLayer layer = inner_.linear(prefix, out_features, in_features);
    add_linear(prefix, layer, block);
    return layer;
  }
  Tensor norm_weight(const std::string& name, std::int64_t length) override {
    Tensor weight = inner_.norm_weight(name, length);
    block.parts.emplace_back(name, weight);
    return weight;
  }

  BuiltBlock block;

 private:
  TransformerWeightSource& inner_;
};

BuiltBlock build_block(WeightLoader& loader, ModelPrecision precision,
                       const QwenImageTransformerConfig& config, std::int64_t index) {
  CheckpointWeightSource source(loader, precision);
  RecordingSource recording(source);
  (void)build_block_weights(recording, config, index);
  return std::move(recording.block);
}

std::uint64_t fnv1a(std::string_view text) {
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  for (char c : text) {
    hash = (hash ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  }
  return hash;
}

std::string file_identity(const std::filesystem::path& path) {
  std::error_code error;
  const std::filesystem::path absolute = std::filesystem::absolute(path, error);
  const auto size = std::filesystem::file_size(path);
  const auto time = std::filesystem::last_write_time(path).time_since_epoch().count();
  return fmt::format("{} {} {}", absolute.string(), size, time);
}

std::string cache_key(const SafetensorsCheckpoint& checkpoint, const WeightLoadOptions& options,
                      const QwenImageTransformerConfig& config, ModelPrecision precision,
                      const std::vector<std::string>& layouts) {
  std::string key = "ethereal transformer block cache v1\n";
  for (const SafetensorsFile& file : checkpoint.files()) {
    key += "file " + file_identity(file.path()) + "\n";
  }
  key += fmt::format("layers {}\nprecision {} {}\n", config.num_layers,
                     dtype_name(precision.weight_dtype), dtype_name(precision.compute_dtype));
  key += fmt::format(
      "format {} scales {}\n",
      options.quant.format ? quant::quant_format_name(*options.quant.format) : "none",
      options.quant.fp8_scales == quant::ScaleGranularity::per_tensor ? "tensor" : "channel");
  for (const std::string& keep : options.quant.keep) {
    key += "keep " + keep + "\n";
  }
  if (options.lora != nullptr) {
    std::set<std::pair<std::string, float>> files;
    for (const std::string& module : options.lora->modules()) {
      for (const LoraLayer& layer : *options.lora->find(module)) {
        files.emplace(file_identity(layer.file), layer.strength);
      }
    }
    for (const auto& [file, strength] : files) {
      key += fmt::format("lora {} strength {}\n", file, strength);
    }
    key += fmt::format("lora at run time {}\n", options.lora_at_run_time);
  }
  std::set<std::string> distinct(layouts.begin(), layouts.end());
  for (const std::string& layout : distinct) {
    key += "layout " + layout + "\n";
  }
  return key;
}

}  // namespace

std::string_view block_cache_policy_name(BlockCachePolicy policy) {
  switch (policy) {
    case BlockCachePolicy::automatic: return "automatic";
    case BlockCachePolicy::always: return "always";
    case BlockCachePolicy::never: return "never";
  }
  return "unknown";
}

std::filesystem::path default_block_cache_directory() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0') {
    return std::filesystem::path(xdg) / "ethereal" / "cache";
  }
  const char* home = std::getenv("HOME");
  return std::filesystem::path(home != nullptr ? home : ".") / ".cache" / "ethereal" / "cache";
}

bool blocks_change_format(const SafetensorsCheckpoint& checkpoint, const TensorNameMap& names,
                          const WeightLoadOptions& options,
                          const QwenImageTransformerConfig& config) {
  // Build every block against a dry-run allocator: a layer changes format when it comes out
  // quantised or when the LoRA was merged into it (marked applied without an adapter).
  CpuCachingAllocator dry(CpuCachingAllocator::Options{.dry_run = true});
  const ScopedAllocator scope(dry);
  WeightLoader loader(checkpoint, names, kComponent, options);
  for (std::int64_t index = 0; index < config.num_layers; ++index) {
    const BuiltBlock block = build_block(loader, ModelPrecision::bf16(), config, index);
    for (const auto& [module, plan] : block.linears) {
      const bool merged =
          options.lora != nullptr && options.lora->find(module) != nullptr && !plan.has_adapter;
      if (!plan.packed || merged) {
        return true;
      }
    }
  }
  return false;
}

// Rebuilds a block's layers from the cache file's parts.
class TransformerBlockCache::Source final : public TransformerWeightSource {
 public:
  Source(const TransformerBlockCache& cache, const BlockPlan& plan) : cache_(cache), plan_(plan) {}

  LinearLayer linear(const std::string& prefix, std::int64_t out_features,
                     std::int64_t in_features) override {
    const LinearPlan& linear_plan = plan_.linears.at(prefix);
    const Tensor bias = optional_part(prefix + ".bias");
    LinearLayer layer;
    if (linear_plan.packed) {
      // A weight without bytes behind it makes PackedLinear allocate its packed buffer
      // without packing anything; the cached packed bytes are then read into that buffer.
      const Tensor shape_only = Tensor::from_blob(nullptr, {out_features, in_features},
                                                  linear_plan.packed_dtype, nullptr);
      cpu::PackedLinear packed(shape_only, bias, linear_plan.packed_dtype);
      cache_.read_into(prefix + ".packed", packed.packed_weight());
      layer = std::move(packed);
    } else {
      quant::QuantizedWeight weight;
      weight.format = linear_plan.format;
      weight.out_features = out_features;
      weight.in_features = in_features;
      weight.values = part(prefix + ".values");
      weight.scales = optional_part(prefix + ".scales");
      if (weight.format == quant::QuantFormat::nf4) {
        weight.nf4.absmax_codes = part(prefix + ".nf4_absmax_codes");
        weight.nf4.group_scales = part(prefix + ".nf4_group_scales");
        weight.nf4.code_map = part(prefix + ".nf4_code_map");
        const Tensor offset = part(prefix + ".nf4_offset");
        weight.nf4.offset = offset.is_dry() ? 0.0f : offset.to_floats().front();
      }
      layer = quant::QuantizedLinear(std::move(weight), bias);
    }
    if (linear_plan.has_adapter) {
      layer.set_adapter(cache_.lora_->adapter(prefix));
    }
    return layer;
  }

  Tensor norm_weight(const std::string& name, std::int64_t length) override { return part(name); }

 private:
  Tensor part(const std::string& name) const {
    const Part& stored = plan_.parts.at(name);
    Tensor tensor = Tensor::empty(stored.shape, stored.dtype);
    cache_.read_into(name, tensor);
    return tensor;
  }
  Tensor optional_part(const std::string& name) const {
    return plan_.parts.count(name) != 0 ? part(name) : Tensor();
  }

  const TransformerBlockCache& cache_;
  const BlockPlan& plan_;
};

TransformerBlockCache::TransformerBlockCache(
    std::shared_ptr<const SafetensorsCheckpoint> checkpoint,
    const QwenImageTransformerConfig& config, ModelPrecision precision, const LoraSet* lora,
    std::vector<BlockPlan> plans)
    : checkpoint_(std::move(checkpoint)),
      config_(config),
      precision_(precision),
      lora_(lora),
      plans_(std::move(plans)) {}

TransformerBlockCache::~TransformerBlockCache() = default;

void TransformerBlockCache::read_into(const std::string& name, const Tensor& destination) const {
  if (destination.is_dry()) {
    return;
  }
  const TensorInfo& stored = file_->info(name);
  if (stored.nbytes() != destination.nbytes()) {
    throw InvalidInputError(fmt::format(
        "{}: cached tensor \"{}\" has {} bytes but the block needs {}; delete the file so that "
        "it is written again",
        file_->path().string(), name, stored.nbytes(), destination.nbytes()));
  }
  reader_->read_bytes(name, stored.data_begin, stored.nbytes(), destination.data());
}

std::shared_ptr<TransformerBlockCache> TransformerBlockCache::open(
    std::shared_ptr<const SafetensorsCheckpoint> checkpoint, const TensorNameMap& names,
    const WeightLoadOptions& options, const QwenImageTransformerConfig& config,
    ModelPrecision precision, const std::filesystem::path& directory) {
  // Plan every block against a dry-run allocator: part names, dtypes and shapes.
  std::vector<BlockPlan> plans;
  std::vector<std::string> layouts;
  {
    CpuCachingAllocator dry(CpuCachingAllocator::Options{.dry_run = true});
    const ScopedAllocator scope(dry);
    WeightLoader loader(*checkpoint, names, kComponent, options);
    for (std::int64_t index = 0; index < config.num_layers; ++index) {
      BuiltBlock built = build_block(loader, precision, config, index);
      BlockPlan plan;
      for (const auto& [name, tensor] : built.parts) {
        plan.parts.emplace(name, Part{tensor.dtype(), tensor.shape()});
        plan.order.push_back(name);
      }
      plan.linears = std::move(built.linears);
      layouts.insert(layouts.end(), built.layouts.begin(), built.layouts.end());
      plans.push_back(std::move(plan));
    }
  }
  auto cache = std::make_shared<TransformerBlockCache>(checkpoint, config, precision, options.lora,
                                                       std::move(plans));
  if (dry_run_active()) {
    return cache;
  }

  const std::string key = cache_key(*checkpoint, options, config, precision, layouts);
  const std::filesystem::path path =
      directory / fmt::format("transformer-blocks-{:016x}.safetensors", fnv1a(key));
  if (std::filesystem::exists(path)) {
    try {
      if (cache->attach(path, key)) {
        return cache;
      }
    } catch (const Error& error) {
      spdlog::warn("transformer block cache {} is unusable and is written again: {}", path.string(),
                   error.what());
    }
  }
  cache->write(path, key, names, options);
  if (!cache->attach(path, key)) {
    throw IoError(
        fmt::format("{}: the block cache just written does not match its key", path.string()));
  }
  cache->written_ = true;
  return cache;
}

void TransformerBlockCache::write(const std::filesystem::path& path, const std::string& key,
                                  const TensorNameMap& names, const WeightLoadOptions& options) {
  std::filesystem::create_directories(path.parent_path());
  spdlog::info("writing the transformer block cache {} ({} blocks)", path.string(),
               config_.num_layers);
  WeightLoader loader(*checkpoint_, names, kComponent, options);
  // The writer requests each tensor's bytes in file order, which is block order. So a block is
  // built when its first tensor is requested and dropped when the next block is built.
  std::int64_t built_index = -1;
  std::map<std::string, Tensor, std::less<>> built;
  std::vector<SafetensorsEntry> entries;
  for (std::int64_t index = 0; index < config_.num_layers; ++index) {
    const BlockPlan& plan = plans_[static_cast<std::size_t>(index)];
    for (const std::string& name : plan.order) {
      const Part& stored = plan.parts.at(name);
      SafetensorsEntry entry;
      entry.name = name;
      entry.dtype = DType::uint8;
      entry.shape = {
          static_cast<std::int64_t>(dtype_bytes(stored.dtype, shape_numel(stored.shape)))};
      entry.write_data = [&, index, name](TensorDataSink& sink) {
        if (built_index != index) {
          built.clear();
          BuiltBlock block = build_block(loader, precision_, config_, index);
          for (auto& [part_name, tensor] : block.parts) {
            built.emplace(part_name, std::move(tensor));
          }
          built_index = index;
        }
        const Tensor tensor = built.at(name).contiguous();
        const auto* bytes = static_cast<const std::byte*>(tensor.data());
        sink.write(std::span(bytes, tensor.nbytes()));
      };
      entries.push_back(std::move(entry));
    }
  }
  write_safetensors(path, entries, {{kKeyField, key}});
}

bool TransformerBlockCache::attach(const std::filesystem::path& path, const std::string& key) {
  auto file = std::make_unique<SafetensorsCheckpoint>(SafetensorsCheckpoint::open(path));
  const auto found = file->metadata().find(kKeyField);
  if (found == file->metadata().end() || found->second != key) {
    return false;
  }
  block_ranges_.assign(plans_.size(), {});
  for (std::size_t index = 0; index < plans_.size(); ++index) {
    for (const std::string& name : plans_[index].order) {
      const Part& stored = plans_[index].parts.at(name);
      const TensorInfo& info = file->info(name);
      if (info.nbytes() != dtype_bytes(stored.dtype, shape_numel(stored.shape))) {
        throw InvalidInputError(fmt::format("{}: cached tensor \"{}\" has {} bytes, expected {}",
                                            path.string(), name, info.nbytes(),
                                            dtype_bytes(stored.dtype, shape_numel(stored.shape))));
      }
      std::vector<ShardRange>& ranges = block_ranges_[index];
      const SafetensorsFile* shard = &file->file_of(name);
      if (!ranges.empty() && ranges.back().file == shard &&
          ranges.back().begin + ranges.back().length == info.data_begin) {
        ranges.back().length += info.nbytes();  // the block's parts lie back to back
      } else {
        ranges.push_back({shard, info.data_begin, info.nbytes()});
      }
    }
  }
  reader_ = std::make_unique<CheckpointReader>(*file);
  file_ = std::move(file);
  path_ = path;
  return true;
}

TransformerBlockWeights TransformerBlockCache::load(std::int64_t index) {
  std::lock_guard lock(mutex_);
  Source source(*this, plans_.at(static_cast<std::size_t>(index)));
  return build_block_weights(source, config_, index);
}

void TransformerBlockCache::read_ahead(std::int64_t index) const noexcept {
  if (dry_run_active() || file_ == nullptr || index < 0 ||
      index >= static_cast<std::int64_t>(block_ranges_.size())) {
    return;
  }
  for (const ShardRange& range : block_ranges_[static_cast<std::size_t>(index)]) {
    try {
      range.file->mapping().advise_willneed(range.begin, range.length);
    } catch (const std::exception& error) {
      spdlog::debug("read-ahead of cached transformer block {} failed: {}", index, error.what());
      return;
    }
  }
}

}  // namespace ethereal
