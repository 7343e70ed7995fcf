// Loading a full-width Qwen-Image transformer with quantisation: time, peak allocated bytes and
// peak resident set size per weight format.
//
// The program writes a transformer of the real width (D = 3072, 24 heads of 128, MLP 12288,
// joint dim 3584) with `--blocks N` blocks (default 1) of seeded uniform random bf16 weights to
// `--directory DIR` (default /tmp/ethereal_quant_load_bench), then writes a quantised copy per
// format with quantize_model (timed). Each load then runs in a fresh process (this program
// started again with --case), so that the peak resident set size (VmHWM) belongs to that load
// alone:
//   - bf16:                 the bf16 file, packed as bf16;
//   - FORMAT while loading: the bf16 file, quantised layer by layer (WeightLoadOptions);
//   - FORMAT as stored:     the quantised copy, its layers used as stored.
// The checkpoint files are in the page cache (just written), so load times exclude disk reads.
// The loader releases each tensor's file pages after use, so mapped pages barely count.
//
// Columns: load time, the allocator's bytes after loading ("loaded") and its peak during loading,
// the bound the unit test checks (loaded + 2 x the largest linear weight in bf16), and the
// process's peak RSS.
//
// Run: ethereal_quant_load_bench [--blocks N] [--directory DIR] [--keep-files]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "io/model_directory.h"
#include "io/random_checkpoint.h"
#include "models/model_directory_writer.h"
#include "models/qwen_image/transformer.h"
#include "models/qwen_image/transformer_config.h"
#include "models/qwen_image/transformer_tensor_names.h"
#include "models/reference_models.h"
#include "models/tiny_model.h"
#include "models/weight_loader.h"
#include "pipeline/quantize_model.h"
#include "runtime/allocator.h"
#include "runtime/parallel.h"
#include "runtime/system_memory.h"

namespace {

namespace fs = std::filesystem;
using ethereal::DType;
using ethereal::quant::QuantFormat;

constexpr QuantFormat kFormats[] = {QuantFormat::fp8_e4m3, QuantFormat::nf4, QuantFormat::int8};
constexpr double kMiB = 1024.0 * 1024.0;

// The released transformer's configuration with `blocks` blocks.
nlohmann::json full_width_config(int blocks) {
  nlohmann::json config =
      ethereal::reference_model_files("qwen-image-edit-2511").transformer_config;
  config["num_layers"] = blocks;
  return config;
}

// Writes a transformer directory of seeded uniform random bf16 weights (write_random_checkpoint).
void write_model(const fs::path& root, int blocks) {
  const nlohmann::json config = full_width_config(blocks);
  fs::create_directories(root / "transformer");
  ethereal::write_json_file(root / "transformer" / "config.json", config);
  std::vector<std::pair<std::string, ethereal::Shape>> tensors;
  for (const ethereal::TensorSpec& spec : ethereal::transformer_tensor_specs(config)) {
    tensors.emplace_back(spec.name, spec.shape);
  }
  ethereal::write_random_checkpoint(root / "transformer" / "diffusion_pytorch_model.safetensors",
                                    tensors, 17);
}

// One load in this process; prints "seconds loaded_bytes peak_bytes peak_rss_bytes".
int run_case(const fs::path& model, const std::string& format_name) {
  const ethereal::ModelDirectory directory = ethereal::ModelDirectory::open(model);
  const ethereal::SafetensorsCheckpoint checkpoint =
      directory.open_weights(ethereal::ModelComponent::transformer);
  const ethereal::QwenImageTransformerConfig config =
      ethereal::QwenImageTransformerConfig::from_file(
          *directory.config_path(ethereal::ModelComponent::transformer));
  ethereal::WeightLoadOptions options;
  if (format_name != "bf16") {
    options.quant.format = ethereal::quant::parse_quant_format(format_name);
    options.quant.fp8_scales = ethereal::quant::ScaleGranularity::per_tensor;
  }
  ethereal::CpuCachingAllocator allocator;
  ethereal::ScopedAllocator scope(allocator);
  const auto start = std::chrono::steady_clock::now();
  const ethereal::QwenImageTransformer transformer =
      ethereal::QwenImageTransformer::load(checkpoint, config, ethereal::ModelPrecision::bf16(),
                                           ethereal::comfy_transformer_tensor_name, options);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const ethereal::AllocatorStats stats = allocator.stats();
  std::printf("%.3f %lld %lld %llu\n", seconds,
              static_cast<long long>(stats.allocated_bytes.current),
              static_cast<long long>(stats.allocated_bytes.peak),
              static_cast<unsigned long long>(ethereal::read_process_memory().peak_resident_bytes));
  return 0;
}

struct CaseResult {
  double seconds = 0.0;
  long long loaded = 0;
  long long peak = 0;
  unsigned long long peak_rss = 0;
};

std::optional<CaseResult> spawn_case(const fs::path& model, const std::string& format_name) {
  const std::string command =
      fmt::format("'{}' --case '{}' '{}'", fs::read_symlink("/proc/self/exe").string(),
                  model.string(), format_name);
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) {
    return std::nullopt;
  }
  CaseResult result;
  const int fields = std::fscanf(pipe, "%lf %lld %lld %llu", &result.seconds, &result.loaded,
                                 &result.peak, &result.peak_rss);
  const int status = ::pclose(pipe);
  if (fields != 4 || status != 0) {
    return std::nullopt;
  }
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--case") {
    return run_case(argv[2], argv[3]);
  }
  int blocks = 1;
  fs::path directory = "/tmp/ethereal_quant_load_bench";
  bool keep_files = false;
  for (int i = 1; i < argc; ++i) {
    const std::string argument = argv[i];
    if (argument == "--blocks" && i + 1 < argc) {
      blocks = std::atoi(argv[++i]);
    } else if (argument == "--directory" && i + 1 < argc) {
      directory = argv[++i];
    } else if (argument == "--keep-files") {
      keep_files = true;
    } else {
      std::fprintf(stderr, "usage: %s [--blocks N] [--directory DIR] [--keep-files]\n", argv[0]);
      return 2;
    }
  }

  fs::remove_all(directory);
  fs::create_directories(directory);
  const fs::path bf16_model = directory / "model";
  auto start = std::chrono::steady_clock::now();
  write_model(bf16_model, blocks);
  std::printf("wrote %d block(s) of bf16 weights, %.1f MiB, in %.1f s (%d threads)\n", blocks,
              static_cast<double>(fs::file_size(bf16_model / "transformer" /
                                                "diffusion_pytorch_model.safetensors")) /
                  kMiB,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
              ethereal::thread_count());

  // The largest linear weight: img_mod.1 / txt_mod.1, [6 D, D].
  const double largest_bf16 = 2.0 * 6 * 3072 * 3072;
  std::printf(
      "\n| load | time (s) | loaded (MiB) | peak allocated (MiB) | bound (MiB) | "
      "peak RSS (MiB) |\n|---|---|---|---|---|---|\n");
  const auto report = [&](const std::string& label, const fs::path& model,
                          const std::string& format_name) {
    const std::optional<CaseResult> result = spawn_case(model, format_name);
    if (!result) {
      std::printf("| %s | failed | | | | |\n", label.c_str());
      return;
    }
    std::printf("| %s | %.2f | %.1f | %.1f | %.1f | %.1f |\n", label.c_str(), result->seconds,
                static_cast<double>(result->loaded) / kMiB,
                static_cast<double>(result->peak) / kMiB,
                (static_cast<double>(result->loaded) + 2.0 * largest_bf16) / kMiB,
                static_cast<double>(result->peak_rss) / kMiB);
    std::fflush(stdout);
  };
  report("bf16", bf16_model, "bf16");
  for (QuantFormat format : kFormats) {
    const std::string name(ethereal::quant::quant_format_name(format));
    report(name + " while loading", bf16_model, name);
  }

  std::printf("\n");
  for (QuantFormat format : kFormats) {
    const std::string name(ethereal::quant::quant_format_name(format));
    ethereal::QuantizeModelOptions options;
    options.model = bf16_model;
    options.output = directory / ("model-" + name);
    options.format = format;
    const ethereal::QuantizeModelReport written = ethereal::quantize_model(options);
    std::printf("quantize_model %s: %.1f s, %.1f MiB -> %.1f MiB\n", name.c_str(), written.seconds,
                static_cast<double>(written.components.at(0).source_bytes) / kMiB,
                static_cast<double>(written.components.at(0).output_bytes) / kMiB);
  }
  std::printf(
      "\n| load | time (s) | loaded (MiB) | peak allocated (MiB) | bound (MiB) | "
      "peak RSS (MiB) |\n|---|---|---|---|---|---|\n");
  for (QuantFormat format : kFormats) {
    const std::string name(ethereal::quant::quant_format_name(format));
    report(name + " as stored", directory / ("model-" + name), name);
  }
  report("fp8 stored, loaded as bf16", directory / "model-fp8_e4m3", "bf16");

  if (!keep_files) {
    fs::remove_all(directory);
  }
  return 0;
}
