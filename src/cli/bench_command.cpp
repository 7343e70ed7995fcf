// ethereal bench: runs one edit with each load strategy and compares memory, speed and output
// quality (pipeline/strategy_bench.h does the work).
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "io/image_file.h"
#include "io/model_directory.h"
#include "memory/manager.h"
#include "memory/size.h"
#include "memory/strategy.h"
#include "models/tiny_model.h"
#include "pipeline/strategy_bench.h"
#include "runtime/allocator.h"
#include "runtime/error.h"

namespace ethereal::cli {

namespace {

// The standard strategies plus int8 weights, resident.
const char* const kDefaultStrategies[] = {"fp16_full",   "fp8_optimized",      "nf4_quantized",
                                          "cpu_offload", "sequential_offload", "int8+resident"};

// Size of the synthetic input image when neither --image nor --width/--height is given.
constexpr int kSyntheticImageSide = 1024;

struct BenchOptions {
  std::string model;
  std::vector<std::string> strategies;
  std::vector<std::string> images;
  std::string prompt = "make the sky a warm sunset orange";
  int steps = 8;
  double cfg_scale = 4.0;
  std::uint64_t seed = 0;
  int width = 0;
  int height = 0;
  std::string lightning;
  int repeat = 1;
  std::string memory_limit;
  std::string save_images;
  bool no_weight_error = false;
  bool json = false;
};

EditRequest bench_request(const BenchOptions& options) {
  EditRequest request;
  request.prompt = options.prompt;
  request.steps = options.steps;
  request.cfg_scale = options.cfg_scale;
  request.seed = options.seed;
  if (options.width > 0) {
    request.output_size = ImageSize{options.width, options.height};
  }
  for (const std::string& path : options.images) {
    request.images.push_back(read_image(path));
  }
  if (request.images.empty()) {
    const int width = options.width > 0 ? options.width : kSyntheticImageSide;
    const int height = options.height > 0 ? options.height : kSyntheticImageSide;
    request.images.push_back(synthetic_bench_image(width, height));
  }
  return request;
}

nlohmann::json request_json(const BenchOptions& options, const EditRequest& request) {
  return {
      {"prompt", options.prompt},
      {"images",
       options.images.empty() ? nlohmann::json("synthetic") : nlohmann::json(options.images)},
      {"steps", options.steps},
      {"cfg_scale", options.cfg_scale},
      {"seed", options.seed},
      {"width",
       request.output_size ? nlohmann::json(request.output_size->width) : nlohmann::json(nullptr)},
      {"height",
       request.output_size ? nlohmann::json(request.output_size->height) : nlohmann::json(nullptr)},
      {"repeat", options.repeat},
      {"lightning",
       options.lightning.empty() ? nlohmann::json(nullptr) : nlohmann::json(options.lightning)},
  };
}

void save_outputs(const std::filesystem::path& folder, const std::vector<BenchRow>& rows) {
  std::filesystem::create_directories(folder);
  for (const BenchRow& row : rows) {
    if (row.success) {
      std::string file_name = row.name;
      std::replace(file_name.begin(), file_name.end(), '+', '_');
      write_png(folder / (file_name + ".png"), row.output);
    }
  }
}

int run_bench(const BenchOptions& options, bool strategies_given) {
  if ((options.width == 0) != (options.height == 0)) {
    throw InvalidInputError("--width and --height go together; pass both or neither");
  }
  if (!options.lightning.empty() && strategies_given) {
    throw InvalidInputError(
        "--lightning compares base, lightning_bf16 and lightning_fp8, so it cannot be combined "
        "with --strategies; drop one of the two");
  }
  const std::filesystem::path model_path =
      options.model.empty() ? default_model_directory() : std::filesystem::path(options.model);
  const ModelDirectory model = ModelDirectory::open(model_path);
  if (!options.memory_limit.empty()) {
    current_allocator(Device::cpu()).set_capacity(memory::parse_size(options.memory_limit));
  }

  const EditRequest request = bench_request(options);
  const PipelineLoadOptions base;
  std::vector<BenchConfiguration> configurations;
  if (!options.lightning.empty()) {
    configurations =
        lightning_configurations(options.lightning, base, request, memory::assess_this_machine());
  } else {
    std::vector<memory::LoadStrategy> strategies;
    const std::vector<std::string> names =
        strategies_given ? options.strategies
                         : std::vector<std::string>(std::begin(kDefaultStrategies),
                                                    std::end(kDefaultStrategies));
    for (const std::string& name : names) {
      strategies.push_back(memory::parse_strategy(name));
    }
    configurations = strategy_configurations(strategies, base, request);
  }

  const BenchLog log = [](const std::string& line) {
    std::fprintf(stderr, "%s\n", line.c_str());
    std::fflush(stderr);
  };
  StrategyBenchReport report;
  report.reference = configurations.front().name;
  report.model = options.model.empty() ? "tiny default model (random weights)" : options.model;
  report.request = request_json(options, request);
  report.machine = bench_machine_json();
  report.results = run_configurations(model, configurations, options.repeat, {}, log);
  if (!options.no_weight_error) {
    report.weight_error = measure_weight_error(model, quantized_formats(configurations), log);
  }
  if (!options.save_images.empty()) {
    save_outputs(options.save_images, report.results);
  }

  if (options.json) {
    std::cout << report.to_json().dump(2) << "\n";
  } else {
    std::cout << report.to_text();
  }

  const bool any_success = std::any_of(report.results.begin(), report.results.end(),
                                       [](const BenchRow& row) { return row.success; });
  if (any_success) {
    return 0;
  }
  const bool all_out_of_memory = std::all_of(report.results.begin(), report.results.end(),
                                             [](const BenchRow& row) { return row.out_of_memory; });
  return all_out_of_memory ? 3 : 1;
}

}  // namespace

Command add_bench_command(CLI::App& parent, const GlobalOptions& global) {
  auto options = std::make_shared<BenchOptions>();
  CLI::App* app = parent.add_subcommand(
      "bench",
      "Run one edit with each load strategy and compare weight memory, peaks, speed and output "
      "quality (PSNR, SSIM) against the bf16 resident strategy");
  app->add_option("--model", options->model,
                  "Diffusers model directory (default: the tiny built-in model, random weights)");
  app->add_option("--strategies", options->strategies,
                  "Comma-separated strategies: fp16_full, fp8_optimized, nf4_quantized, "
                  "cpu_offload, sequential_offload, or FORMAT+PLACEMENT such as int8+resident "
                  "(default: those five and int8+resident). fp16_full always runs first as the "
                  "reference")
      ->delimiter(',');

  app->add_option("--image", options->images,
                  "Input image (PNG or JPEG); repeat for several (default: a synthetic image of "
                  "the output size, or 1024x1024)");
  app->add_option("--prompt", options->prompt, "The edit instruction")->capture_default_str();
  app->add_option("--steps", options->steps,
                  "Denoising steps (of the base configuration with --lightning)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("--cfg-scale", options->cfg_scale,
                  "True classifier-free guidance scale; 1 or less disables the negative pass")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  app->add_option("--seed", options->seed, "Seed of the initial noise, the same for every run")
      ->capture_default_str();

  app->add_option("--width", options->width, "Output width in pixels (multiple of 16)")
      ->check(CLI::Range(16, 8192));
  app->add_option("--height", options->height, "Output height in pixels (multiple of 16)")
      ->check(CLI::Range(16, 8192));
  app->add_option("--lightning", options->lightning,
                  "Lightning LoRA file: compare base (bf16, --steps) with Lightning in bf16 and "
                  "in fp8 (4 or 8 steps from the file name, CFG 1, shift-3 schedule)");

  app->add_option("--repeat", options->repeat,
                  "Edits per configuration; times are medians over them")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("--memory-limit", options->memory_limit,
                  "Cap on the memory the allocator may reserve, e.g. 8GiB; a configuration that "
                  "exceeds it is reported as out of memory");
  app->add_option("--save-images", options->save_images,
                  "Folder to write each configuration's output as CONFIGURATION.png");
  app->add_flag("--no-weight-error", options->no_weight_error,
                "Skip the per-layer quantisation error pass over the checkpoint");
  app->add_flag("--json", options->json,
                "Print the report as one JSON document on standard output");

  Command command;
  command.app = app;
  command.run = [options, app]() { return run_bench(*options, app->count("--strategies") > 0); };
  return command;
}

}  // namespace ethereal::cli
