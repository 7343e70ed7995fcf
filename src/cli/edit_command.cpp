// ethereal edit: one edit with the model directory given by --model (default: the tiny model).
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "backends/edit_backend.h"
#include "cli/command.h"
#include "io/image_file.h"
#include "io/model_directory.h"
#include "memory/size.h"
#include "memory/strategy.h"
#include "models/tiny_model.h"
#include "pipeline/edit_pipeline.h"
#include "pipeline/lightning.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "runtime/report_json.h"
#include "runtime/system_memory.h"

namespace ethereal::cli {

namespace {

struct EditOptions {
  std::vector<std::string> images;
  std::string prompt;
  std::string negative_prompt = " ";
  std::string output;
  std::string model;
  int steps = 40;
  double cfg_scale = 4.0;
  std::uint64_t seed = 0;
  std::string initial_noise;
  int width = 0;
  int height = 0;
  std::string precision = "bf16";
  std::string strategy = "auto";
  std::string mode;
  std::string memory_limit;
  std::string config;
  std::string log_dir;
  std::vector<std::string> loras;
  std::string lightning;
  bool json = false;
  bool steps_given = false;
};

// One line per stage on standard error; on a terminal the denoising steps share one line.
class ProgressPrinter {
 public:
  ProgressPrinter() : terminal_(isatty(STDERR_FILENO) != 0) {}

  void operator()(const EditProgress& p) {
    if (p.stage == "denoising") {
      const std::string bar(static_cast<std::size_t>(20 * p.step / std::max(1, p.steps)), '#');
      std::fprintf(stderr, "%sdenoising     [%-20s] %d/%d  %.2f s/step%s", terminal_ ? "\r" : "",
                   bar.c_str(), p.step, p.steps, p.seconds,
                   terminal_ && p.step < p.steps ? "" : "\n");
    } else {
      std::fprintf(stderr, "%-14s%.2f s\n", p.stage.c_str(), p.seconds);
    }
    std::fflush(stderr);
  }

 private:
  bool terminal_;
};

std::string model_label(const EditOptions& options) {
  return options.model.empty() ? "tiny default model (random weights)" : options.model;
}

nlohmann::json result_json(const EditOptions& options, const BackendEditResult& edited,
                           double cfg_scale) {
  nlohmann::json json = edited.to_json();
  json["output"] = options.output;
  json["model"] = model_label(options);
  json["width"] = edited.report.result.size.width;
  json["height"] = edited.report.result.size.height;
  json["cfg_scale"] = cfg_scale;
  json["seed"] = options.seed;
  json["loras"] = options.loras;
  json["lightning"] = options.lightning;
  return json;
}

int run_edit(const EditOptions& options) {
  const std::filesystem::path output(options.output);
  if (output.extension() != ".png" && output.extension() != ".PNG") {
    throw InvalidInputError(fmt::format(
        "--output {} must name a .png file; the edited image is written as PNG", options.output));
  }
  if ((options.width == 0) != (options.height == 0)) {
    throw InvalidInputError("--width and --height go together; pass both or neither");
  }
  ModelPrecision precision = ModelPrecision::bf16();
  if (options.precision == "f32") {
    precision = ModelPrecision::f32();
  }
  BackendOptions backend_options;
  backend_options.model = options.model;
  backend_options.pipeline.precision = precision;
  for (const std::string& lora : options.loras) {
    backend_options.pipeline.loras.push_back(parse_lora_argument(lora));
  }
  if (!options.config.empty()) {
    backend_options.config_file = options.config;
  }
  if (!options.mode.empty()) {
    backend_options.mode = memory::parse_mode(options.mode);
  }
  if (!options.memory_limit.empty()) {
    backend_options.memory_limit_bytes = memory::parse_size(options.memory_limit);
  }
  if (!options.log_dir.empty()) {
    backend_options.log_dir = options.log_dir;
  }
  if (options.strategy != "auto") {
    backend_options.first_strategy = options.strategy;
  }

  BackendEditOptions edit_options;
  edit_options.negative_prompt = options.negative_prompt;
  edit_options.steps = options.steps;
  edit_options.cfg_scale = options.cfg_scale;
  edit_options.seed = options.seed;
  if (!options.initial_noise.empty()) {
    edit_options.initial_noise = options.initial_noise;
  }
  if (options.width > 0) {
    edit_options.output_size = ImageSize{options.width, options.height};
  }
  if (!options.lightning.empty()) {
    EditRequest lightning_request;
    apply_lightning(
        lightning_recipe(options.lightning,
                         options.steps_given ? std::optional<int>(options.steps) : std::nullopt),
        backend_options.pipeline, lightning_request);
    edit_options.steps = lightning_request.steps;
    edit_options.cfg_scale = lightning_request.cfg_scale;
    edit_options.scheduler = lightning_request.scheduler;
  }
  std::vector<Image> images;
  for (const std::string& path : options.images) {
    images.push_back(read_image(path));
  }

  EnhancedImageEditBackend backend(backend_options);
  spdlog::info(
      "settings: model={} images={} steps={} cfg_scale={} seed={} precision={} strategy={} "
      "mode={} loras={}",
      backend.model_path().string(), options.images.size(), edit_options.steps,
      edit_options.cfg_scale, options.seed, options.precision, options.strategy,
      memory::mode_name(backend.config().mode), backend_options.pipeline.loras.size());

  ProgressPrinter printer;
  const BackendEditResult edited =
      backend.edit(options.prompt, images, edit_options, std::ref(printer));
  const EditResult& result = edited.report.result;

  std::vector<PngTextChunk> metadata = {{"prompt", options.prompt},
                                        {"negative_prompt", options.negative_prompt},
                                        {"seed", std::to_string(options.seed)},
                                        {"steps", std::to_string(result.steps)},
                                        {"cfg_scale", fmt::format("{}", edit_options.cfg_scale)},
                                        {"strategy", edited.report.strategy.name},
                                        {"model", model_label(options)},
                                        {"software", std::string("ethereal ") + ETHEREAL_VERSION}};
  write_png(output, result.image, metadata);

  if (options.json) {
    std::cout << result_json(options, edited, edit_options.cfg_scale).dump(2) << "\n";
  } else {
    std::fprintf(stderr, "wrote %s (%dx%d)\n", options.output.c_str(), result.size.width,
                 result.size.height);
  }
  return 0;
}

}  // namespace

Command add_edit_command(CLI::App& parent, const GlobalOptions& global) {
  auto options = std::make_shared<EditOptions>();
  CLI::App* app = parent.add_subcommand("edit", "Edit one or more images with an instruction");
  app->add_option("--image", options->images,
                  "Input image (PNG or JPEG); repeat for several images, the last one sets the "
                  "default output aspect ratio")
      ->required();
  app->add_option("--prompt", options->prompt, "The edit instruction")->required();
  app->add_option("--output", options->output, "Output PNG file (written atomically)")->required();
  app->add_option("--negative-prompt", options->negative_prompt,
                  "Negative prompt for true CFG (used when --cfg-scale > 1)")
      ->capture_default_str();
  app->add_option("--model", options->model,
                  "Diffusers model directory (default: the tiny built-in model, random weights)");
  app->add_option("--steps", options->steps, "Denoising steps")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("--cfg-scale", options->cfg_scale,
                  "True classifier-free guidance scale; 1 or less disables the negative pass")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  app->add_option("--seed", options->seed, "Seed of the initial noise")->capture_default_str();
  app->add_option("--initial-noise", options->initial_noise,
                  "Safetensors file with an f32 tensor \"noise\" [1, 16, H/8, W/8] used instead "
                  "of the seeded noise");
  app->add_option("--width", options->width, "Output width in pixels (multiple of 16)")
      ->check(CLI::Range(16, 8192));
  app->add_option("--height", options->height, "Output height in pixels (multiple of 16)")
      ->check(CLI::Range(16, 8192));
  app->add_option("--precision", options->precision,
                  "Weight and activation dtype: bf16, or f32 for reference comparisons")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  app->add_option("--strategy", options->strategy,
                  "auto (plan every candidate and pick by --mode), or a strategy to try first: "
                  "fp16_full, fp8_optimized, nf4_quantized, cpu_offload, sequential_offload, or "
                  "FORMAT+PLACEMENT such as int8+model_offload")
      ->capture_default_str();
  app->add_option("--mode", options->mode,
                  "How candidates that fit are ranked: adaptive, performance, memory, quality "
                  "(default from the configuration: adaptive)");
  app->add_option("--memory-limit", options->memory_limit,
                  "Cap on the memory the engine may reserve, e.g. 8GiB, 512MiB or bytes");
  app->add_option("--config", options->config, "YAML configuration file");
  app->add_option("--log-dir", options->log_dir,
                  "Folder for the memory log, event stream and timeline (default from the "
                  "configuration: ~/.cache/ethereal/logs)");
  app->add_option("--lora", options->loras,
                  "LoRA file, optionally with a strength as FILE:SCALE; repeat for several");
  app->add_option("--lightning", options->lightning,
                  "Lightning LoRA file: applies it with its recipe (4 or 8 steps from the file "
                  "name unless --steps is given, CFG 1, constant shift-3 schedule)");
  app->add_flag("--json", options->json,
                "Print the result as one JSON document on standard output");
  Command command;
  command.app = app;
  command.run = [options, app]() {
    options->steps_given = app->count("--steps") > 0;
    return run_edit(*options);
  };
  return command;
}

}  // namespace ethereal::cli
