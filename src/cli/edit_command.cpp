// ethereal edit: one edit with the model directory given by --model (default: the tiny model).
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "io/image_file.h"
#include "io/model_directory.h"
#include "models/tiny_model.h"
#include "pipeline/edit_pipeline.h"
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
  bool json = false;
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

nlohmann::json result_json(const EditOptions& options, const EditResult& result,
                           const AllocatorStats& stats) {
  const ProcessMemory process = read_process_memory();
  return {{"output", options.output},
          {"model", model_label(options)},
          {"width", result.size.width},
          {"height", result.size.height},
          {"steps", result.steps},
          {"cfg_scale", options.cfg_scale},
          {"seed", options.seed},
          {"prompt_tokens", result.prompt_tokens},
          {"image_tokens", result.image_tokens},
          {"strategy", "fp16_full"},
          {"fallbacks", nlohmann::json::array()},
          {"retries", nlohmann::json::array()},
          {"stage_times_s",
           {{"text_encoding", result.text_encoding_s},
            {"vae_encode", result.vae_encode_s},
            {"denoising", result.denoising_s},
            {"vae_decode", result.vae_decode_s}}},
          {"step_times_s", result.step_s},
          {"peak_allocated_bytes", stats.allocated_bytes.peak},
          {"peak_reserved_bytes", stats.reserved_bytes.peak},
          {"peak_resident_bytes", process.peak_resident_bytes}};
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

  EditRequest request;
  for (const std::string& path : options.images) {
    request.images.push_back(read_image(path));
  }
  request.prompt = options.prompt;
  request.negative_prompt = options.negative_prompt;
  request.steps = options.steps;
  request.cfg_scale = options.cfg_scale;
  request.seed = options.seed;
  if (!options.initial_noise.empty()) {
    request.initial_noise = options.initial_noise;
  }
  if (options.width > 0) {
    request.output_size = ImageSize{options.width, options.height};
  }
  validate_edit_request(request);

  const std::filesystem::path model_path =
      options.model.empty() ? default_model_directory() : std::filesystem::path(options.model);
  spdlog::info("settings: model={} images={} steps={} cfg_scale={} seed={} precision={}",
               model_path.string(), options.images.size(), options.steps, options.cfg_scale,
               options.seed, options.precision);
  const EditPipeline pipeline = EditPipeline::load(ModelDirectory::open(model_path), precision);

  ProgressPrinter printer;
  const EditResult result = pipeline.run(request, {}, std::ref(printer));

  std::vector<PngTextChunk> metadata = {{"prompt", options.prompt},
                                        {"negative_prompt", options.negative_prompt},
                                        {"seed", std::to_string(options.seed)},
                                        {"steps", std::to_string(result.steps)},
                                        {"cfg_scale", fmt::format("{}", options.cfg_scale)},
                                        {"model", model_label(options)},
                                        {"software", std::string("ethereal ") + ETHEREAL_VERSION}};
  write_png(output, result.image, metadata);

  const AllocatorStats stats = current_allocator(Device::cpu()).stats();
  if (options.json) {
    std::cout << result_json(options, result, stats).dump(2) << "\n";
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
  app->add_flag("--json", options->json,
                "Print the result as one JSON document on standard output");
  Command command;
  command.app = app;
  command.run = [options]() { return run_edit(*options); };
  return command;
}

}  // namespace ethereal::cli
