#include "pipeline/strategy_bench.h"

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <new>
#include <utility>

#include <fmt/format.h>

#include "io/safetensors_checkpoint.h"
#include "memory/size.h"
#include "models/qwen2_5_vl/tensor_names.h"
#include "models/qwen_image/transformer_tensor_names.h"
#include "pipeline/image_quality.h"
#include "pipeline/lightning.h"
#include "pipeline/scheduler.h"
#include "quant/quant_policy.h"
#include "quant/quantize.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "runtime/hardware.h"
#include "runtime/parallel.h"
#include "runtime/report_json.h"
#include "runtime/system_memory.h"

namespace ethereal {

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kWorstLayers = 3;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double process_cpu_seconds() {
  timespec now{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
}

double median(std::vector<double> values) {
  if (values.empty()) {
    return 0.0;
  }
  std::sort(values.begin(), values.end());
  const std::size_t middle = values.size() / 2;
  return values.size() % 2 == 1 ? values[middle] : 0.5 * (values[middle - 1] + values[middle]);
}

// Resets the process's peak resident set size (VmHWM) to its current size. Returns false when
// the kernel rejects the write (for example without /proc), so the peak cannot be attributed
// to one configuration.
bool reset_peak_resident_set() {
  std::ofstream clear_refs("/proc/self/clear_refs");
  if (!clear_refs) {
    return false;
  }
  clear_refs << "5";
  clear_refs.flush();
  return static_cast<bool>(clear_refs);
}

BenchRow empty_row(const BenchConfiguration& configuration) {
  BenchRow row;
  row.name = configuration.name;
  row.strategy = configuration.strategy.name;
  row.weight_format = configuration.strategy.weight_format_name();
  row.placement = std::string(placement_name(configuration.load.placement));
  row.lora = !configuration.load.loras.empty();
  row.steps = configuration.request.steps;
  row.cfg_scale = configuration.request.cfg_scale;
  return row;
}

void emit(const BenchLog& log, const std::string& line) {
  if (log) {
    log(line);
  }
}

bool is_float_weight(DType dtype) {
  return dtype == DType::f32 || dtype == DType::bf16 || dtype == DType::f16;
}

// The checkpoint of one component with its name map to canonical names.
struct ComponentWeights {
  std::string component;  // as quant::is_quantizable_linear names it
  ModelComponent folder;
};

TensorNameMap name_map_of(const ComponentWeights& component,
                          const SafetensorsCheckpoint& checkpoint) {
  if (component.folder == ModelComponent::transformer) {
    return comfy_transformer_tensor_name;
  }
  return qwen25vl_tensor_name_map(detect_qwen25vl_layout(checkpoint));
}

FormatWeightError summarize(quant::QuantFormat format, std::vector<LayerWeightError> errors) {
  FormatWeightError summary;
  summary.format = format;
  summary.layers = static_cast<std::int64_t>(errors.size());
  if (errors.empty()) {
    return summary;
  }
  std::vector<double> values;
  values.reserve(errors.size());
  for (const LayerWeightError& error : errors) {
    values.push_back(error.relative_error);
  }
  summary.median = median(values);
  std::sort(errors.begin(), errors.end(), [](const LayerWeightError& a, const LayerWeightError& b) {
    return a.relative_error > b.relative_error;
  });
  summary.max = errors.front().relative_error;
  errors.resize(std::min(errors.size(), kWorstLayers));
  summary.worst = std::move(errors);
  return summary;
}

// Discs, stripes and a colour gradient: value of channel `c` at (x, y).
std::uint8_t synthetic_value(int x, int y, int c, int width, int height) {
  const double u = static_cast<double>(x) / std::max(1, width - 1);
  const double v = static_cast<double>(y) / std::max(1, height - 1);
  double value = 0.0;
  switch (c) {
    case 0: value = 40.0 + 180.0 * u; break;
    case 1: value = 60.0 + 150.0 * v; break;
    default: value = 200.0 - 120.0 * (u + v) / 2.0; break;
  }
  const double dx = u - 0.35;
  const double dy = v - 0.4;
  if (dx * dx + dy * dy < 0.04) {
    value = c == 0 ? 230.0 : 40.0;
  }
  const double ex = u - 0.7;
  const double ey = v - 0.65;
  if (ex * ex + ey * ey < 0.02) {
    value = c == 2 ? 220.0 : 50.0;
  }
  if (v > 0.85 && (x / std::max(1, width / 32)) % 2 == 0) {
    value = 20.0;
  }
  return static_cast<std::uint8_t>(std::clamp(value, 0.0, 255.0));
}

nlohmann::json optional_json(const std::optional<double>& value) {
  return value ? nlohmann::json(*value) : nlohmann::json(nullptr);
}

nlohmann::json row_json(const BenchRow& row) {
  nlohmann::json json = {
      {"configuration", row.name},
      {"strategy", row.strategy},
      {"weight_format", row.weight_format},
      {"placement", row.placement},
      {"reference", row.reference},
      {"lora", row.lora},
      {"steps", row.steps},
      {"cfg_scale", row.cfg_scale},
      {"success", row.success},
      {"out_of_memory", row.out_of_memory},
      {"peak_allocated_bytes", row.peak_allocated_bytes},
      {"peak_reserved_bytes", row.peak_reserved_bytes},
      {"peak_rss_delta_bytes", row.peak_rss_delta_bytes ? nlohmann::json(*row.peak_rss_delta_bytes)
                                                        : nlohmann::json(nullptr)},
  };
  if (!row.success) {
    json["message"] = row.error;
    return json;
  }

  json["weight_bytes"] = row.weight_bytes;
  json["load_s"] = row.load_s;
  json["step_s"] = row.step_s;
  json["edit_s"] = row.edit_s;
  json["edit_cpu_s"] = row.edit_cpu_s;
  json["total_s"] = row.total_s;
  json["width"] = row.output.width();
  json["height"] = row.output.height();
  const bool identical = row.psnr_db && std::isinf(*row.psnr_db);
  json["psnr_db"] = identical ? nlohmann::json(nullptr) : optional_json(row.psnr_db);
  json["psnr_identical"] = identical;
  json["ssim"] = optional_json(row.ssim);
  return json;
}

nlohmann::json weight_error_json(const WeightErrorReport& report) {
  nlohmann::json json = nlohmann::json::object();
  for (const FormatWeightError& format : report.formats) {
    nlohmann::json worst = nlohmann::json::array();
    for (const LayerWeightError& layer : format.worst) {
      worst.push_back({{"component", layer.component},
                       {"layer", layer.module},
                       {"relative_error", layer.relative_error}});
    }
    json[std::string(quant::quant_format_name(format.format))] = {
        {"layers", format.layers},
        {"max", format.max},
        {"median", format.median},
        {"worst", worst},
    };
  }
  json["skipped_stored_quantized"] = report.skipped_stored_quantized;
  return json;
}

std::string size_text(std::int64_t bytes) {
  if (bytes < 0) {
    return "-" + memory::format_size(static_cast<std::uint64_t>(-bytes));
  }
  return memory::format_size(static_cast<std::uint64_t>(bytes));
}

std::string quality_text(const std::optional<double>& value, const char* format) {
  if (!value) {
    return "n/a";
  }
  if (std::isinf(*value)) {
    return "inf";
  }
  return fmt::format(fmt::runtime(format), *value);
}

// Validates every request and builds its schedule, so that bad input (for example one step
// with the model's shift_terminal schedule) fails before any model is loaded.
void check_requests(const ModelDirectory& model,
                    const std::vector<BenchConfiguration>& configurations) {
  const FlowMatchSchedulerConfig model_schedule =
      FlowMatchSchedulerConfig::from_file(*model.config_path(ModelComponent::scheduler));
  for (const BenchConfiguration& configuration : configurations) {
    const EditRequest& request = configuration.request;
    validate_edit_request(request);
    FlowMatchEulerScheduler scheduler(request.scheduler.value_or(model_schedule));
    // The sequence length only moves the dynamic shift, not whether the schedule is valid.
    constexpr int kSequenceLength = 4096;
    scheduler.set_timesteps(request.steps, kSequenceLength, request.sigmas);
  }
}

}  // namespace

std::vector<BenchConfiguration> strategy_configurations(
    const std::vector<memory::LoadStrategy>& strategies, const PipelineLoadOptions& base,
    const EditRequest& request) {
  std::vector<memory::LoadStrategy> ordered = {memory::parse_strategy(kReferenceStrategy)};
  for (const memory::LoadStrategy& strategy : strategies) {
    const bool seen = std::any_of(ordered.begin(), ordered.end(), [&](const auto& existing) {
      return existing.name == strategy.name;
    });
    if (!seen) {
      ordered.push_back(strategy);
    }
  }
  std::vector<BenchConfiguration> configurations;
  for (const memory::LoadStrategy& strategy : ordered) {
    configurations.push_back({strategy.name, strategy, strategy.load_options(base), request});
  }
  return configurations;
}

Fp8Choice choose_fp8(const memory::HardwareAssessment& hardware) {
  Fp8Choice choice;
  choice.strategy = memory::parse_strategy("fp8_optimized");
  choice.native = hardware.fp8_native;
  choice.note = hardware.fp8_note;
  return choice;
}

std::vector<BenchConfiguration> lightning_configurations(
    const std::filesystem::path& lora_file, const PipelineLoadOptions& base,
    const EditRequest& request, const memory::HardwareAssessment& hardware) {
  const LightningRecipe recipe = lightning_recipe(lora_file);
  const memory::LoadStrategy bf16 = memory::parse_strategy(kReferenceStrategy);
  const Fp8Choice fp8 = choose_fp8(hardware);

  std::vector<BenchConfiguration> configurations;
  configurations.push_back({"base", bf16, bf16.load_options(base), request});

  BenchConfiguration lightning_bf16{"lightning_bf16", bf16, bf16.load_options(base), request};
  apply_lightning(recipe, lightning_bf16.load, lightning_bf16.request);
  configurations.push_back(std::move(lightning_bf16));

  BenchConfiguration lightning_fp8{"lightning_fp8", fp8.strategy, fp8.strategy.load_options(base),
                                   request};
  lightning_fp8.load.quant.fp8_scales = quant::ScaleGranularity::per_channel;
  lightning_fp8.load.lora_at_run_time = false;  // merged into f32, then quantised
  apply_lightning(recipe, lightning_fp8.load, lightning_fp8.request);
  configurations.push_back(std::move(lightning_fp8));
  return configurations;
}

BenchRow run_configuration(const ModelDirectory& model, const BenchConfiguration& configuration,
                           int repeat, const EditMemoryOptions& memory, const BenchLog& log) {
  if (repeat < 1) {
    throw InvalidInputError(fmt::format("--repeat must be at least 1, got {}", repeat));
  }
  BenchRow row = empty_row(configuration);
  Allocator& allocator = current_allocator(Device::cpu());
  allocator.empty_cache();
  allocator.reset_peaks();
  const bool peak_rss_reset = reset_peak_resident_set();
  const std::int64_t rss_before = static_cast<std::int64_t>(read_process_memory().resident_bytes);
  const std::int64_t allocated_before = allocator.stats().allocated_bytes.current;
  const std::int64_t reserved_before = allocator.stats().reserved_bytes.current;

  try {
    emit(log, fmt::format("{}: loading ({}, {})", row.name, row.weight_format, row.placement));
    const Clock::time_point load_start = Clock::now();
    EditPipeline pipeline = EditPipeline::load(model, configuration.load);
    row.load_s = seconds_since(load_start);
    row.weight_bytes = allocator.stats().allocated_bytes.current - allocated_before;
    emit(log, fmt::format("{}: loaded in {:.2f} s, {} allocated", row.name, row.load_s,
                          size_text(row.weight_bytes)));

    std::vector<double> step_times;
    std::vector<double> edit_times;
    std::vector<double> edit_cpu_times;
    for (int index = 0; index < repeat; ++index) {
      const Clock::time_point edit_start = Clock::now();
      const double cpu_start = process_cpu_seconds();
      EditResult result = pipeline.run(configuration.request, memory);
      edit_times.push_back(seconds_since(edit_start));
      edit_cpu_times.push_back(process_cpu_seconds() - cpu_start);
      step_times.insert(step_times.end(), result.step_s.begin(), result.step_s.end());
      emit(log, fmt::format("{}: edit {}/{} in {:.2f} s", row.name, index + 1, repeat,
                            edit_times.back()));
      if (index == 0) {
        row.output = std::move(result.image);
      }
    }
    row.step_s = median(step_times);
    row.edit_s = median(edit_times);
    row.edit_cpu_s = median(edit_cpu_times);
    row.total_s = row.load_s + row.edit_s;
    row.success = true;
  } catch (const InvalidInputError&) {
    throw;
  } catch (const OutOfMemoryError& error) {
    row.out_of_memory = true;
    row.error = error.what();
  } catch (const std::bad_alloc&) {
    row.out_of_memory = true;
    row.error = "out of host memory (std::bad_alloc)";
  } catch (const std::exception& error) {
    row.error = error.what();
  }
  if (!row.success) {
    emit(log, fmt::format("{}: failed: {}", row.name, row.error));
  }

  const AllocatorStats stats = allocator.stats();
  row.peak_allocated_bytes = stats.allocated_bytes.peak - allocated_before;
  row.peak_reserved_bytes = stats.reserved_bytes.peak - reserved_before;
  if (peak_rss_reset) {
    row.peak_rss_delta_bytes =
        static_cast<std::int64_t>(read_process_memory().peak_resident_bytes) - rss_before;
  }
  allocator.empty_cache();
  return row;
}

std::vector<BenchRow> run_configurations(const ModelDirectory& model,
                                         const std::vector<BenchConfiguration>& configurations,
                                         int repeat, const EditMemoryOptions& memory,
                                         const BenchLog& log) {
  check_requests(model, configurations);
  std::vector<BenchRow> rows;
  for (std::size_t index = 0; index < configurations.size(); ++index) {
    emit(log,
         fmt::format("[{}/{}] {}", index + 1, configurations.size(), configurations[index].name));
    rows.push_back(run_configuration(model, configurations[index], repeat, memory, log));
  }
  if (rows.empty()) {
    return rows;
  }
  rows.front().reference = true;
  const BenchRow& reference = rows.front();
  if (!reference.success) {
    return rows;
  }
  for (BenchRow& row : rows) {
    if (row.success && row.output.width() == reference.output.width() &&
        row.output.height() == reference.output.height()) {
      row.psnr_db = psnr(row.output, reference.output);
      row.ssim = ssim(row.output, reference.output);
    }
  }
  return rows;
}

double relative_weight_error(const Tensor& weight, quant::QuantFormat format) {
  if (weight.dim() != 2) {
    throw InvalidInputError(
        fmt::format("relative_weight_error: the weight must be 2-D [out, in], got {}",
                    shape_str(weight.shape())));
  }
  const Tensor original = weight.to(DType::f32).contiguous();
  const Tensor decoded = quant::dequantize(quant::quantize(original, format), DType::f32);
  const std::int64_t rows = original.size(0);
  const std::int64_t columns = original.size(1);
  const float* a = original.data_as<float>();
  const float* b = decoded.data_as<float>();
  // Per-row sums, added in row order afterwards so the result does not depend on threading.
  std::vector<double> error_sums(static_cast<std::size_t>(rows), 0.0);
  std::vector<double> norm_sums(static_cast<std::size_t>(rows), 0.0);
  parallel_for(0, rows, 16, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t row = begin; row < end; ++row) {
      double error = 0.0;
      double norm = 0.0;
      for (std::int64_t column = 0; column < columns; ++column) {
        const double w = a[row * columns + column];
        const double d = w - static_cast<double>(b[row * columns + column]);
        error += d * d;
        norm += w * w;
      }
      error_sums[static_cast<std::size_t>(row)] = error;
      norm_sums[static_cast<std::size_t>(row)] = norm;
    }
  });
  double error = 0.0;
  double norm = 0.0;
  for (std::int64_t row = 0; row < rows; ++row) {
    error += error_sums[static_cast<std::size_t>(row)];
    norm += norm_sums[static_cast<std::size_t>(row)];
  }
  return norm == 0.0 ? 0.0 : std::sqrt(error / norm);
}

WeightErrorReport measure_weight_error(const ModelDirectory& model,
                                       const std::vector<quant::QuantFormat>& formats,
                                       const BenchLog& log) {
  WeightErrorReport report;
  std::map<quant::QuantFormat, std::vector<LayerWeightError>> errors;
  const ComponentWeights components[] = {{"transformer", ModelComponent::transformer},
                                         {"text_encoder", ModelComponent::text_encoder}};
  for (const ComponentWeights& component : components) {
    if (formats.empty() || !model.has(component.folder)) {
      continue;
    }
    const SafetensorsCheckpoint checkpoint = model.open_weights(component.folder);
    const TensorNameMap names = name_map_of(component, checkpoint);
    std::int64_t layers = 0;
    for (const std::string& file_name : checkpoint.names()) {
      const std::optional<std::string> canonical = names(file_name);
      if (!canonical || !canonical->ends_with(".weight")) {
        continue;
      }
      const std::string module = canonical->substr(0, canonical->size() - 7);
      const TensorInfo& info = checkpoint.info(file_name);
      if (!quant::is_quantizable_linear(component.component, module) || info.shape.size() != 2) {
        continue;
      }
      if (!info.dtype || !is_float_weight(*info.dtype)) {
        ++report.skipped_stored_quantized;
        continue;
      }
      {
        const Tensor original = checkpoint.tensor(file_name).to(DType::f32);
        for (quant::QuantFormat format : formats) {
          errors[format].push_back(
              {component.component, module, relative_weight_error(original, format)});
        }
      }
      checkpoint.file_of(file_name).mapping().advise_dontneed(info.data_begin, info.nbytes());
      ++layers;
    }
    emit(log, fmt::format("weight error: {} layers of the {}", layers, component.component));
  }
  for (quant::QuantFormat format : formats) {
    report.formats.push_back(summarize(format, std::move(errors[format])));
  }
  return report;
}

Image synthetic_bench_image(int width, int height) {
  Image image(width, height, 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < 3; ++c) {
        image.at(x, y, c) = synthetic_value(x, y, c, width, height);
      }
    }
  }
  return image;
}

std::vector<quant::QuantFormat> quantized_formats(
    const std::vector<BenchConfiguration>& configurations) {
  std::vector<quant::QuantFormat> formats;
  for (const BenchConfiguration& configuration : configurations) {
    const std::optional<quant::QuantFormat>& format = configuration.strategy.weight_format;
    if (format && std::find(formats.begin(), formats.end(), *format) == formats.end()) {
      formats.push_back(*format);
    }
  }
  return formats;
}

nlohmann::json bench_machine_json() {
  const HardwareInfo info = assess_hardware();
  const memory::HardwareAssessment hardware = memory::assess_this_machine();
  nlohmann::json gpus = nlohmann::json::array();
  for (const GpuInfo& gpu : info.gpus) {
    gpus.push_back(to_json(gpu));
  }
  return {
      {"cpu_model", info.cpu.model_name},
      {"cores", info.cpu.usable_cores},
      {"logical_cores", info.cpu.logical_cores},
      {"threads", thread_count()},
      {"cpu_features", to_json(info.cpu)["features"]},
      {"host_memory_bytes", info.host.total_bytes},
      {"gpus", gpus},
      {"fp8_native", hardware.fp8_native},
      {"fp8_note", hardware.fp8_note},
  };
}

nlohmann::json StrategyBenchReport::to_json() const {
  nlohmann::json rows = nlohmann::json::array();
  for (const BenchRow& row : results) {
    rows.push_back(row_json(row));
  }
  nlohmann::json json = {
      {"reference", reference}, {"model", model},  {"request", request},
      {"machine", machine},     {"results", rows},
  };
  json["weight_error"] = weight_error ? weight_error_json(*weight_error) : nlohmann::json(nullptr);
  return json;
}

std::string StrategyBenchReport::to_text() const {
  std::string text = fmt::format(
      "{:<20} {:<9} {:<19} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>11} {:>11} {:>11} {:>8} {:>7}\n",
      "configuration", "format", "placement", "weights", "load s", "s/step", "edit s", "cpu s",
      "total s", "peak alloc", "peak resv", "peak RSS +", "PSNR dB", "SSIM");
  std::string failures;
  for (const BenchRow& row : results) {
    const std::string name = row.reference ? row.name + " (ref)" : row.name;
    const std::string rss = row.peak_rss_delta_bytes ? size_text(*row.peak_rss_delta_bytes) : "n/a";
    if (!row.success) {
      text += fmt::format(
          "{:<20} {:<9} {:<19} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>11} {:>11} "
          "{:>11} {:>8} {:>7}\n",
          name, row.weight_format, row.placement, "-", "-", "-", "-", "-", "-",
          size_text(row.peak_allocated_bytes), size_text(row.peak_reserved_bytes), rss,
          row.out_of_memory ? "OOM" : "failed", "-");
      failures += fmt::format("{}: {}{}\n", row.name, row.out_of_memory ? "out of memory: " : "",
                              row.error);
      continue;
    }
    text += fmt::format(
        "{:<20} {:<9} {:<19} {:>11} {:>8.2f} {:>8.3f} {:>8.2f} {:>8.2f} {:>8.2f} {:>11} {:>11} "
        "{:>11} {:>8} {:>7}\n",
        name, row.weight_format, row.placement, size_text(row.weight_bytes), row.load_s, row.step_s,
        row.edit_s, row.edit_cpu_s, row.total_s, size_text(row.peak_allocated_bytes),
        size_text(row.peak_reserved_bytes), rss, quality_text(row.psnr_db, "{:.2f}"),
        quality_text(row.ssim, "{:.4f}"));
  }
  text += failures;
  if (weight_error) {
    text += "\nrelative weight error ||W - dequant(quant(W))|| / ||W|| per quantisable layer:\n";
    for (const FormatWeightError& format : weight_error->formats) {
      text += fmt::format("  {:<9} {} layers, max {:.5f}, median {:.5f}; worst:",
                          quant::quant_format_name(format.format), format.layers, format.max,
                          format.median);
      for (const LayerWeightError& layer : format.worst) {
        text += fmt::format(" {}:{} {:.5f}", layer.component, layer.module, layer.relative_error);
      }
      text += "\n";
    }
    if (weight_error->skipped_stored_quantized > 0) {
      text += fmt::format("  {} layers stored quantised in the checkpoint were left out\n",
                          weight_error->skipped_stored_quantized);
    }
  }
  text += fmt::format("\nmachine: {}, {} usable cores ({} logical), {} threads\nfp8: {}\n",
                      machine.value("cpu_model", std::string()), machine.value("cores", 0),
                      machine.value("logical_cores", 0), machine.value("threads", 0),
                      machine.value("fp8_note", std::string()));
  return text;
}

}  // namespace ethereal
