#include "pipeline/quantize_model.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <system_error>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "io/model_directory.h"
#include "io/safetensors_writer.h"
#include "models/qwen2_5_vl/tensor_names.h"
#include "models/qwen_image/transformer_tensor_names.h"
#include "models/weight_loader.h"
#include "quant/quant_policy.h"
#include "quant/quantize.h"
#include "quant/stored_weight.h"
#include "runtime/allocator.h"
#include "runtime/error.h"

namespace ethereal {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kWeightSuffix = ".weight";

struct ComponentSpec {
  ModelComponent component;
  std::string policy_name;  // the component name of quant::QuantPolicy
  std::string base_name;    // checkpoint file name without ".safetensors"
};

const ComponentSpec kRewrittenComponents[] = {
    {ModelComponent::transformer, "transformer", "diffusion_pytorch_model"},
    {ModelComponent::text_encoder, "text_encoder", "model"},
};

std::string module_of(std::string_view weight_tensor) {
  return std::string(weight_tensor.substr(0, weight_tensor.size() - kWeightSuffix.size()));
}

// True when `module` is `prefix` or starts with `prefix` followed by a dot (the rule of
// QuantPolicy::keep).
bool matches_module(std::string_view module, std::string_view prefix) {
  return module == prefix || (module.size() > prefix.size() && module.starts_with(prefix) &&
                              module[prefix.size()] == '.');
}

void write_tensor_bytes(TensorDataSink& sink, const Tensor& tensor) {
  const Tensor contiguous = tensor.contiguous();
  sink.write(std::span(static_cast<const std::byte*>(contiguous.data()), contiguous.nbytes()));
}

void release_pages(const SafetensorsCheckpoint& checkpoint, const std::string& name) {
  const TensorInfo& info = checkpoint.info(name);
  checkpoint.file_of(name).mapping().advise_dontneed(info.data_begin, info.nbytes());
}

// A directory next to the output that receives everything, renamed to the output by commit()
// and removed by the destructor otherwise.
class StagingDirectory {
 public:
  StagingDirectory(const fs::path& output, bool force) : output_(output), force_(force) {
    path_ = output.parent_path() /
            fmt::format(".{}.tmp-{}", output.filename().string(), static_cast<long>(::getpid()));
    std::error_code error;
    fs::remove_all(path_, error);
    if (!fs::create_directory(path_, error) || error) {
      throw InvalidInputError(fmt::format(
          "cannot create {} to write {}: {}; check that the directory exists and is writable",
          path_.string(), output.string(), error ? error.message() : "it exists"));
    }
  }
  ~StagingDirectory() {
    if (!committed_) {
      std::error_code ignored;
      fs::remove_all(path_, ignored);
    }
  }
  StagingDirectory(const StagingDirectory&) = delete;
  StagingDirectory& operator=(const StagingDirectory&) = delete;

  const fs::path& path() const { return path_; }

  // Moves the staged directory to the output. An existing output (only with `force`) is moved
  // aside first and removed once the new one is in place.
  void commit() {
    const bool replace = fs::exists(fs::symlink_status(output_));
    if (replace && !force_) {
      throw InvalidInputError(fmt::format(
          "{} appeared while the model was written; pass --force to replace it", output_.string()));
    }
    fs::path previous;
    if (replace) {
      previous = output_.parent_path() / fmt::format(".{}.old-{}", output_.filename().string(),
                                                     static_cast<long>(::getpid()));
      fs::remove_all(previous);
      fs::rename(output_, previous);
    }
    std::error_code error;
    fs::rename(path_, output_, error);
    if (error) {
      if (replace) {
        fs::rename(previous, output_);
      }
      throw IoError(fmt::format("cannot rename {} to {}: {}", path_.string(), output_.string(),
                                error.message()));
    }
    committed_ = true;
    if (replace) {
      fs::remove_all(previous);
    }
  }

 private:
  fs::path output_;
  fs::path path_;
  bool force_ = false;
  bool committed_ = false;
};

// One linear layer to store quantised.
struct LayerPlan {
  const SafetensorsCheckpoint* checkpoint = nullptr;
  quant::StoredWeight stored;
  quant::QuantFormat format = quant::QuantFormat::fp8_e4m3;
  std::string file_module;  // the layer's name in the file, without ".weight"
};

// Quantises layers for the entries that write their parts, keeping the last layer's result so
// that consecutive parts of one layer quantise it once. The writer orders the f32 scale parts of
// all layers before their 1-byte parts, so a layer's scales are needed before its values, with
// the other layers' scales in between. Scale parts therefore call compute_scales(), which
// encodes no value, and each layer is quantised once, when its values are written.
class LayerQuantizer {
 public:
  // The layer quantised: scales and values.
  const quant::QuantizedWeight& weight(const LayerPlan& plan) { return result(plan, true); }

  // The layer's scales. `values` is undefined unless the last call quantised this layer.
  const quant::QuantizedWeight& scales(const LayerPlan& plan) { return result(plan, false); }

 private:
  const quant::QuantizedWeight& result(const LayerPlan& plan, bool with_values) {
    if (current_ == &plan && (has_values_ || !with_values)) {
      return weight_;
    }
    current_ = nullptr;
    weight_ = quant::QuantizedWeight();  // frees the previous layer first
    quant::QuantizeOptions options;
    // The scaled-fp8 form has one scale per tensor ("<m>.scale_weight").
    options.fp8_scales = quant::ScaleGranularity::per_tensor;
    {
      const Tensor source = quant::decode_stored_weight(*plan.checkpoint, plan.stored, DType::f32);
      weight_ = with_values ? quant::quantize(source, plan.format, options)
                            : quant::compute_scales(source, plan.format, options);
    }
    release_pages(*plan.checkpoint, plan.stored.weight_tensor);
    current_ = &plan;
    has_values_ = with_values;
    return weight_;
  }

  const LayerPlan* current_ = nullptr;
  bool has_values_ = false;
  quant::QuantizedWeight weight_;
};

// The entries of one quantised layer, in the layouts listed in quantize_model.h.
void add_quantized_entries(const std::shared_ptr<const LayerPlan>& plan,
                           const std::shared_ptr<LayerQuantizer>& quantizer,
                           std::vector<SafetensorsEntry>& entries) {
  const std::int64_t out = plan->stored.out_features;
  const std::int64_t in = plan->stored.in_features;
  // The "weight" part (the values) quantises the layer. Every other part needs only the scales,
  // which it takes from the quantised layer when the values were just written.
  const auto part = [&](std::string_view suffix, DType dtype, Shape shape,
                        std::function<void(TensorDataSink&, const quant::QuantizedWeight&)> write) {
    SafetensorsEntry entry;
    const bool writes_values = suffix == "weight";
    entry.name =
        writes_values ? plan->stored.weight_tensor : plan->file_module + "." + std::string(suffix);
    entry.dtype = dtype;
    entry.shape = std::move(shape);
    entry.write_data = [plan, quantizer, writes_values,
                        write = std::move(write)](TensorDataSink& sink) {
      write(sink, writes_values ? quantizer->weight(*plan) : quantizer->scales(*plan));
    };
    entries.push_back(std::move(entry));
  };
  const auto values = [](TensorDataSink& sink, const quant::QuantizedWeight& weight) {
    write_tensor_bytes(sink, weight.values);
  };
  const auto scales = [](TensorDataSink& sink, const quant::QuantizedWeight& weight) {
    write_tensor_bytes(sink, weight.scales);
  };

  switch (plan->format) {
    case quant::QuantFormat::fp8_e4m3:
      part("weight", DType::fp8_e4m3, {out, in}, values);
      part(quant::kScaleWeightSuffix, DType::f32, {}, scales);
      break;
    case quant::QuantFormat::int8:
      part("weight", DType::int8, {out, in}, values);
      part(quant::kWeightScaleSuffix, DType::f32, {out}, scales);
      break;
    case quant::QuantFormat::nf4: {
      const std::int64_t blocks = (out * in + quant::kNf4BlockSize - 1) / quant::kNf4BlockSize;
      const std::int64_t groups =
          (blocks + quant::kNf4AbsmaxGroupSize - 1) / quant::kNf4AbsmaxGroupSize;
      // The packed4 values are out * in / 2 bytes: two codes per byte, rows back to back.
      part("weight", DType::uint8, {out, in / 2}, values);
      part(quant::kNf4AbsmaxSuffix, DType::uint8, {blocks},
           [](TensorDataSink& sink, const quant::QuantizedWeight& weight) {
             write_tensor_bytes(sink, weight.nf4.absmax_codes);
           });
      part(quant::kNf4AbsmaxScaleSuffix, DType::f32, {groups},
           [](TensorDataSink& sink, const quant::QuantizedWeight& weight) {
             write_tensor_bytes(sink, weight.nf4.group_scales);
           });
      part(quant::kNf4AbsmaxMapSuffix, DType::f32, {256},
           [](TensorDataSink& sink, const quant::QuantizedWeight& weight) {
             write_tensor_bytes(sink, weight.nf4.code_map);
           });
      part(quant::kNf4AbsmaxOffsetSuffix, DType::f32, {1},
           [](TensorDataSink& sink, const quant::QuantizedWeight& weight) {
             sink.write(std::as_bytes(std::span(&weight.nf4.offset, 1)));
           });
      break;
    }
  }
}

// Copies the stored bytes of `name` and releases its pages.
SafetensorsEntry copy_entry(const SafetensorsCheckpoint& checkpoint, const std::string& name) {
  const TensorInfo& info = checkpoint.info(name);
  if (!info.dtype) {
    throw InvalidInputError(fmt::format(
        "{}: tensor \"{}\" has dtype {}, which this engine cannot write; convert it to a float "
        "dtype first",
        checkpoint.file_of(name).path().string(), name, info.stored_dtype));
  }
  SafetensorsEntry entry;
  entry.name = name;
  entry.dtype = *info.dtype;
  entry.shape = info.shape;
  entry.write_data = [&checkpoint, name](TensorDataSink& sink) {
    const TensorInfo& stored = checkpoint.info(name);
    const std::byte* data = checkpoint.file_of(name).mapping().data() + stored.data_begin;
    sink.write(std::span(data, stored.nbytes()));
    release_pages(checkpoint, name);
  };
  return entry;
}

// A layer stored quantised (or scaled) in the source that stays unquantised: written as bf16.
SafetensorsEntry decoded_entry(const SafetensorsCheckpoint& checkpoint,
                               const quant::StoredWeight& stored) {
  SafetensorsEntry entry;
  entry.name = stored.weight_tensor;
  entry.dtype = DType::bf16;
  entry.shape = {stored.out_features, stored.in_features};
  entry.write_data = [&checkpoint, stored](TensorDataSink& sink) {
    write_tensor_bytes(sink, quant::decode_stored_weight(checkpoint, stored, DType::bf16));
    release_pages(checkpoint, stored.weight_tensor);
  };
  return entry;
}

TensorNameMap name_map_of(const ComponentSpec& spec, const SafetensorsCheckpoint& checkpoint) {
  if (spec.component == ModelComponent::transformer) {
    return comfy_transformer_tensor_name;
  }
  return qwen25vl_tensor_name_map(detect_qwen25vl_layout(checkpoint));
}

bool is_scaled_fp8_marker(std::string_view name) {
  if (name.starts_with(kComfyDiffusionModelPrefix)) {
    name.remove_prefix(kComfyDiffusionModelPrefix.size());
  }
  return name == quant::kScaledFp8Marker;
}

// The output's __metadata__: the format and the program that wrote it.
SafetensorsMetadata output_metadata(const quant::QuantPolicy& policy) {
  const quant::QuantFormat format = *policy.format;
  SafetensorsMetadata metadata = {
      {"format", "pt"},
      {"quantization_format", std::string(quant::quant_format_name(format))},
      {"quantized_by", fmt::format("ethereal quantize {}", ETHEREAL_VERSION)},
  };
  switch (format) {
    case quant::QuantFormat::fp8_e4m3:
      metadata["quantization_layout"] = "scaled_fp8: <m>.weight F8_E4M3, <m>.scale_weight F32 []";
      break;
    case quant::QuantFormat::int8:
      metadata["quantization_layout"] = "<m>.weight I8, <m>.weight_scale F32 [out]";
      break;
    case quant::QuantFormat::nf4:
      metadata["quantization_layout"] =
          "<m>.weight U8 [out, in/2] packed low nibble first, <m>.weight_absmax U8, "
          "<m>.weight_absmax_scale F32, <m>.weight_absmax_map F32 [256], "
          "<m>.weight_absmax_offset F32 [1]";
      break;
  }
  if (!policy.keep.empty()) {
    metadata["quantization_keep"] = fmt::format("{}", fmt::join(policy.keep, ","));
  }
  return metadata;
}

// Copies the files of a rewritten component's folder other than its checkpoint.
void copy_component_files(const fs::path& source, const fs::path& target) {
  fs::create_directory(target);
  for (const fs::directory_entry& entry : fs::directory_iterator(source)) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with(".") || name.ends_with(".safetensors") ||
        name.ends_with(".safetensors.index.json")) {
      continue;
    }
    fs::copy(entry.path(), target / name, fs::copy_options::recursive);
  }
}

// The tensors to write for one component, planned before anything is written.
struct ComponentPlan {
  const ComponentSpec* spec = nullptr;
  std::unique_ptr<const SafetensorsCheckpoint> checkpoint;
  std::vector<SafetensorsEntry> entries;
  QuantizedComponentReport report;
};

// Plans the rewrite of one component; records in `matched_keep` the keep entries that match
// one of its quantisable layers.
ComponentPlan plan_component(const ModelDirectory& model, const ComponentSpec& spec,
                             const quant::QuantPolicy& policy,
                             std::set<std::string>& matched_keep) {
  ComponentPlan plan;
  plan.spec = &spec;
  plan.checkpoint =
      std::make_unique<const SafetensorsCheckpoint>(model.open_weights(spec.component));
  const SafetensorsCheckpoint& checkpoint = *plan.checkpoint;
  const TensorNameMap names = name_map_of(spec, checkpoint);

  // The layout of every weight, and the scale and metadata tensors that belong to them.
  std::map<std::string, quant::StoredWeight> stored_of;
  std::set<std::string> auxiliary;
  for (const std::string& name : checkpoint.names()) {
    if (name.ends_with(kWeightSuffix)) {
      quant::StoredWeight stored = quant::inspect_stored_weight(checkpoint, name);
      auxiliary.insert(stored.auxiliary_tensors.begin(), stored.auxiliary_tensors.end());
      stored_of.emplace(name, std::move(stored));
    }
  }

  QuantizedComponentReport& report = plan.report;
  report.component = spec.policy_name;
  report.source_bytes = checkpoint.data_bytes();
  std::vector<SafetensorsEntry>& entries = plan.entries;
  auto quantizer = std::make_shared<LayerQuantizer>();
  bool prefixed = false;
  for (const std::string& name : checkpoint.names()) {
    prefixed = prefixed || name.starts_with(kComfyDiffusionModelPrefix);
    if (auxiliary.count(name) != 0 || is_scaled_fp8_marker(name)) {
      continue;  // written with their layer, or replaced
    }
    const auto stored = stored_of.find(name);
    const std::optional<std::string> canonical = names(name);
    const bool matrix = stored != stored_of.end() && stored->second.out_features > 0;
    if (!matrix || !canonical) {
      entries.push_back(copy_entry(checkpoint, name));
      continue;
    }
    const std::string module = module_of(*canonical);
    if (quant::is_quantizable_linear(spec.policy_name, module)) {
      for (const std::string& kept : policy.keep) {
        if (matches_module(module, kept)) {
          matched_keep.insert(kept);
        }
      }
    }
    std::optional<quant::QuantFormat> format = policy.format_of(spec.policy_name, module);
    if (format == quant::QuantFormat::nf4 && stored->second.in_features % 2 != 0) {
      spdlog::warn(
          "quantize: {} has an odd in_features ({}); the nf4 file layout needs an even "
          "one, so it stays bf16",
          name, stored->second.in_features);
      format.reset();
    }
    if (format) {
      auto layer = std::make_shared<const LayerPlan>(
          LayerPlan{&checkpoint, stored->second, *format, module_of(name)});
      add_quantized_entries(layer, quantizer, entries);
      ++report.quantized_layers;
    } else if (stored->second.is_quantized() || !stored->second.scale_tensor.empty()) {
      entries.push_back(decoded_entry(checkpoint, stored->second));
    } else {
      entries.push_back(copy_entry(checkpoint, name));
    }
  }
  if (policy.format == quant::QuantFormat::fp8_e4m3 && report.quantized_layers > 0) {
    SafetensorsEntry marker;
    marker.name = (prefixed ? std::string(kComfyDiffusionModelPrefix) : std::string()) +
                  std::string(quant::kScaledFp8Marker);
    marker.dtype = DType::fp8_e4m3;
    marker.shape = {0};
    marker.write_data = [](TensorDataSink&) {};
    entries.push_back(std::move(marker));
  }

  report.tensors = static_cast<std::int64_t>(entries.size());
  for (const SafetensorsEntry& entry : entries) {
    report.output_bytes +=
        dtype_bytes(entry.dtype, static_cast<std::size_t>(shape_numel(entry.shape)));
  }
  return plan;
}

// Writes the planned checkpoint and copies the component's other files into `target`.
void write_component(const ModelDirectory& model, const ComponentPlan& plan,
                     const quant::QuantPolicy& policy, const fs::path& target,
                     std::uint64_t max_shard_bytes) {
  const ComponentSpec& spec = *plan.spec;
  copy_component_files(model.folder(spec.component), target);
  spdlog::info("quantize: {}: {} tensors ({} layers to {}), {} -> {}", spec.policy_name,
               plan.report.tensors, plan.report.quantized_layers,
               quant::quant_format_name(*policy.format), format_mib(plan.report.source_bytes),
               format_mib(plan.report.output_bytes));
  const SafetensorsMetadata metadata = output_metadata(policy);
  if (plan.report.output_bytes <= max_shard_bytes) {
    write_safetensors(target / (spec.base_name + ".safetensors"), plan.entries, metadata);
  } else {
    write_sharded_safetensors(target, spec.base_name, plan.entries, max_shard_bytes, metadata);
  }
}

// The output path without a trailing separator; checks it against the source.
fs::path checked_output(const QuantizeModelOptions& options, const ModelDirectory& model) {
  fs::path output = options.output.lexically_normal();
  if (!output.empty() && output.filename().empty()) {
    output = output.parent_path();
  }
  if (output.empty() || output.filename() == "." || output.filename() == "..") {
    throw InvalidInputError(
        fmt::format("invalid output directory \"{}\"; name a new directory such as model-fp8",
                    options.output.string()));
  }
  output = fs::absolute(output);
  const fs::path source = fs::weakly_canonical(model.root());
  const fs::path target = fs::weakly_canonical(output);
  const auto [source_end, target_end] =
      std::mismatch(source.begin(), source.end(), target.begin(), target.end());
  if (target_end == target.end()) {
    throw InvalidInputError(fmt::format(
        "output directory {} is the model directory {} or contains it; choose another output",
        output.string(), source.string()));
  }
  if (fs::exists(fs::symlink_status(output)) && !options.force) {
    throw InvalidInputError(fmt::format(
        "output {} already exists; pass --force to replace it, or choose another output",
        output.string()));
  }
  if (!fs::is_directory(output.parent_path())) {
    throw InvalidInputError(
        fmt::format("the parent directory of the output, {}, does not exist; create it first",
                    output.parent_path().string()));
  }
  return output;
}

}  // namespace

QuantizeModelReport quantize_model(const QuantizeModelOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  const ModelDirectory model = ModelDirectory::open(options.model);
  const fs::path output = checked_output(options, model);
  if (!model.has(ModelComponent::transformer) && !model.has(ModelComponent::text_encoder)) {
    throw InvalidInputError(fmt::format(
        "{} has neither a transformer nor a text_encoder folder; there is nothing to quantise",
        model.root().string()));
  }

  quant::QuantPolicy policy;
  policy.format = options.format;
  policy.fp8_scales = quant::ScaleGranularity::per_tensor;
  policy.keep = options.keep;

  // Plan both components first, so that a bad layer or --keep entry fails before any writing.
  std::vector<ComponentPlan> plans;
  std::set<std::string> matched_keep;
  for (const ComponentSpec& spec : kRewrittenComponents) {
    if (model.has(spec.component)) {
      plans.push_back(plan_component(model, spec, policy, matched_keep));
    }
  }
  for (const std::string& kept : options.keep) {
    if (matched_keep.count(kept) == 0) {
      throw InvalidInputError(fmt::format(
          "--keep {} matches no quantisable layer of {}; give a module name such as "
          "transformer_blocks.0 or transformer_blocks.0.attn.to_q (the diffusers names)",
          kept, model.root().string()));
    }
  }

  StagingDirectory staging(output, options.force);
  std::set<fs::path> rewritten = {fs::weakly_canonical(output)};
  for (const ComponentPlan& plan : plans) {
    rewritten.insert(fs::weakly_canonical(model.folder(plan.spec->component)));
  }
  for (const fs::directory_entry& entry : fs::directory_iterator(model.root())) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with(".") && rewritten.count(fs::weakly_canonical(entry.path())) == 0) {
      fs::copy(entry.path(), staging.path() / name, fs::copy_options::recursive);
    }
  }

  QuantizeModelReport report;
  for (const ComponentPlan& plan : plans) {
    const fs::path target = staging.path() / model.folder(plan.spec->component).filename();
    write_component(model, plan, policy, target, options.max_shard_bytes);
    report.components.push_back(plan.report);
  }
  staging.commit();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace ethereal
