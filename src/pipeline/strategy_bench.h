// Benchmark of load strategies on one edit (`ethereal bench`).
//
// Each configuration (a load strategy, optionally with the Lightning LoRA and its recipe) loads
// the pipeline afresh and runs the same request with the same seed. Between configurations the
// previous pipeline is destroyed, the CPU allocator's cache is emptied and its peaks are reset,
// so every row's figures are its own. The first configuration is the reference: every other
// output is compared with its output by PSNR and SSIM (image_quality.h).
//
// Separately, measure_weight_error() reads the quantisable linear weights of the transformer
// and the text encoder from the checkpoint, one tensor at a time, and reports the relative
// round-trip error ||W - dequantize(quantize(W))||_F / ||W||_F of each quantised format.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/image.h"
#include "io/model_directory.h"
#include "memory/manager.h"
#include "memory/strategy.h"
#include "pipeline/edit_pipeline.h"
#include "quant/quant_format.h"
#include "runtime/tensor.h"

namespace ethereal {

// The strategy every comparison is measured against: bf16 weights, resident.
inline constexpr std::string_view kReferenceStrategy = "fp16_full";

// One configuration to benchmark.
struct BenchConfiguration {
  // Row label: the strategy name, or "base", "lightning_bf16", "lightning_fp8".
  std::string name;
  memory::LoadStrategy strategy;
  PipelineLoadOptions load;
  EditRequest request;
};

// The measurements of one configuration.
struct BenchRow {
  std::string name;
  std::string strategy;
  std::string weight_format;  // "bf16", "fp8_e4m3", "nf4", "int8"
  std::string placement;
  bool reference = false;
  bool lora = false;  // the configuration applies LoRA files
  int steps = 0;
  double cfg_scale = 0.0;

  bool success = false;
  bool out_of_memory = false;
  std::string error;  // why the configuration failed

  // Allocated bytes right after load() minus those before it: the resident weights. The
  // offload placements load components during the edit, so theirs is what stays loaded.
  std::int64_t weight_bytes = 0;
  double load_s = 0.0;
  double step_s = 0.0;  // median over every denoising step of every repeat
  double edit_s = 0.0;  // median over repeats of one edit's wall time
  // Median over repeats of the process CPU time (all threads) of one edit. On a machine shared
  // with other work it varies less than the wall time.
  double edit_cpu_s = 0.0;
  double total_s = 0.0;  // load_s + edit_s
  // Allocator peaks over load and every repeat, above what was allocated and reserved before
  // the load.
  std::int64_t peak_allocated_bytes = 0;
  std::int64_t peak_reserved_bytes = 0;
  // Peak resident set size (VmHWM) minus the resident set size before loading; absent when the
  // kernel does not let the process reset its peak (/proc/self/clear_refs). It includes the
  // pages of the memory-mapped checkpoint that the load touched.
  std::optional<std::int64_t> peak_rss_delta_bytes;
  // Against the reference's output; absent when either failed. psnr_db is +infinity for an
  // output identical to the reference.
  std::optional<double> psnr_db;
  std::optional<double> ssim;
  Image output;  // of the first repeat
};

// The round-trip error of one layer in one format.
struct LayerWeightError {
  std::string component;  // "transformer" or "text_encoder"
  std::string module;     // canonical name without ".weight"
  double relative_error = 0.0;
};

// The round-trip errors of one format over every quantisable layer.
struct FormatWeightError {
  quant::QuantFormat format = quant::QuantFormat::int8;
  std::int64_t layers = 0;
  double max = 0.0;
  double median = 0.0;
  std::vector<LayerWeightError> worst;  // the 3 largest errors, largest first
};

struct WeightErrorReport {
  std::vector<FormatWeightError> formats;
  // Quantisable layers whose checkpoint tensor is already quantised (fp8, int8 or nf4), left
  // out because their original values are not in the file.
  std::int64_t skipped_stored_quantized = 0;
};

// Returns the configurations of a strategy comparison: the reference strategy first (added
// when `strategies` lacks it), then `strategies` in order without repeats. Each gets
// strategy.load_options(base) and `request`.
std::vector<BenchConfiguration> strategy_configurations(
    const std::vector<memory::LoadStrategy>& strategies, const PipelineLoadOptions& base,
    const EditRequest& request);

// The fp8 configuration for a machine.
struct Fp8Choice {
  // fp8_e4m3 weights with a scale per output channel, resident (fp8_optimized).
  memory::LoadStrategy strategy;
  // The assessment's verdict: native fp8 matrix multiplication needs a CUDA GPU of compute
  // capability 8.9 or higher and a backend that uses it. The CPU backend always reports false
  // and uses fp8 as a storage format decoded to bf16 in the matmul kernels.
  bool native = false;
  std::string note;  // the assessment's explanation, for the output
};

Fp8Choice choose_fp8(const memory::HardwareAssessment& hardware);

// Returns the configurations of a Lightning comparison: "base" (bf16, resident, `request` as
// given, the reference), then "lightning_bf16" and "lightning_fp8" (choose_fp8(hardware)).
// Both Lightning rows apply the recipe of `lora_file`: its step count from the file name,
// CFG 1 and the shift-3 schedule. The fp8 row merges the LoRA into the weights before
// quantising them. Throws InvalidInputError when the file does not exist.
std::vector<BenchConfiguration> lightning_configurations(
    const std::filesystem::path& lora_file, const PipelineLoadOptions& base,
    const EditRequest& request, const memory::HardwareAssessment& hardware);

// Receives one line of progress per stage of a configuration (for standard error).
using BenchLog = std::function<void(const std::string& line)>;

// Loads `configuration` afresh and runs its request `repeat` times. Out of memory
// (OutOfMemoryError, std::bad_alloc) and other failures are recorded in the row, except
// InvalidInputError, which propagates because bad input fails every configuration.
BenchRow run_configuration(const ModelDirectory& model, const BenchConfiguration& configuration,
                           int repeat, const EditMemoryOptions& memory = {},
                           const BenchLog& log = {});

// Runs every configuration in order, the first one as the reference, and fills psnr_db and
// ssim of every row whose output can be compared with the reference's. Every request and its
// schedule are checked first, so bad input throws InvalidInputError before any load.
std::vector<BenchRow> run_configurations(const ModelDirectory& model,
                                         const std::vector<BenchConfiguration>& configurations,
                                         int repeat, const EditMemoryOptions& memory = {},
                                         const BenchLog& log = {});

// Returns ||W - dequantize(quantize(W, format))||_F / ||W||_F of a 2-D float weight
// [out, in], accumulated in double (0 for an all-zero weight). Throws InvalidInputError like
// quantize().
double relative_weight_error(const Tensor& weight, quant::QuantFormat format);

// Measures relative_weight_error of every quantisable linear layer
// (quant::is_quantizable_linear) of the transformer and the text encoder of `model`, in every
// format of `formats`. Each weight is read from the checkpoint, measured and released before
// the next one.
WeightErrorReport measure_weight_error(const ModelDirectory& model,
                                       const std::vector<quant::QuantFormat>& formats,
                                       const BenchLog& log = {});

// Draws a synthetic RGB test image: smooth colour gradients with discs and stripes, so that
// SSIM has structure to compare.
Image synthetic_bench_image(int width, int height);

struct StrategyBenchReport {
  std::string reference;  // name of the reference configuration
  std::string model;      // the model directory or its label
  nlohmann::json request;
  nlohmann::json machine;
  std::vector<BenchRow> results;
  std::optional<WeightErrorReport> weight_error;

  // Returns {"reference", "model", "request", "machine", "results": [...],
  // "weight_error": {...}}. PSNR of an identical output is null with "psnr_identical": true.
  nlohmann::json to_json() const;
  // Formats the results as a text table, then the weight errors and the machine.
  std::string to_text() const;
};

// Describes this machine: cpu_model, cores (usable), logical_cores, threads, cpu_features,
// host_memory_bytes, gpus, fp8_native and fp8_note.
nlohmann::json bench_machine_json();

// Returns the quantised formats among the configurations' strategies, in first-use order.
std::vector<quant::QuantFormat> quantized_formats(
    const std::vector<BenchConfiguration>& configurations);

}  // namespace ethereal
