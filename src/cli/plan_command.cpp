// ethereal plan: dry-run plans of every candidate strategy for one edit, whether each fits this
// machine (or a described one), the recommended order, and what more memory would buy.
#include <stdlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "io/image_file.h"
#include "io/model_directory.h"
#include "memory/config.h"
#include "memory/manager.h"
#include "memory/planner.h"
#include "memory/size.h"
#include "models/reference_models.h"
#include "models/tiny_model.h"
#include "runtime/allocator.h"
#include "runtime/error.h"

namespace ethereal::cli {
namespace {

struct PlanOptions {
  std::string model;
  std::string reference_model;
  std::vector<std::string> images;
  int width = 0;
  int height = 0;
  int steps = 40;
  double cfg_scale = 4.0;
  std::string strategies;
  std::string mode;
  std::string config;
  std::string memory_limit;
  std::string device_memory;
  std::string host_memory;
  std::string device_name;
  std::string compute_capability;
  bool json = false;
};

// A folder under the temporary directory, removed with its contents on destruction.
class TemporaryFolder {
 public:
  explicit TemporaryFolder(const std::string& prefix) {
    std::string pattern = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw IoError(
          fmt::format("cannot create a temporary folder {}: {}", pattern, std::strerror(errno)));
    }
    path_ = pattern;
  }
  ~TemporaryFolder() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TemporaryFolder(const TemporaryFolder&) = delete;
  TemporaryFolder& operator=(const TemporaryFolder&) = delete;

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  std::size_t begin = 0;
  while (begin <= text.size()) {
    const std::size_t end = std::min(text.find(',', begin), text.size());
    if (end > begin) {
      items.push_back(text.substr(begin, end - begin));
    }
    begin = end + 1;
  }
  return items;
}

std::optional<std::pair<int, int>> parse_compute_capability(const std::string& text) {
  if (text.empty()) {
    return std::nullopt;
  }
  int major = 0;
  int minor = 0;
  char dot = 0;
  char extra = 0;
  if (std::sscanf(text.c_str(), "%d%c%d%c", &major, &dot, &minor, &extra) != 3 || dot != '.' ||
      major < 1 || minor < 0) {
    throw InvalidInputError(
        fmt::format("--compute-capability {}: expected MAJOR.MINOR, for example 8.9 or 9.0", text));
  }
  return std::pair{major, minor};
}

nlohmann::json plan_json(const memory::StrategyPlan& plan) {
  return {{"strategy", plan.strategy.name},
          {"weight_format", plan.strategy.weight_format_name()},
          {"placement", placement_name(plan.strategy.placement)},
          {"fits", plan.fits},
          {"fit_by_capped_run", plan.fit_by_capped_run},
          {"working_memory", plan.strategy.chunked_attention ? "reduced" : "full"},
          {"reason", plan.reason},
          {"shortfall_bytes", plan.shortfall_bytes},
          {"weight_bytes", plan.weight_bytes},
          {"peak_bytes", plan.peak_bytes},
          {"stage_peak_bytes", plan.stage_peak_bytes},
          {"peak_allocated_bytes", plan.peak_allocated_bytes},
          {"plan_s", plan.plan_s}};
}

int run_plan(const PlanOptions& options) {
  if ((options.width == 0) != (options.height == 0)) {
    throw InvalidInputError("--width and --height go together; pass both or neither");
  }
  if (options.device_memory.empty() != options.host_memory.empty()) {
    throw InvalidInputError(
        "--device-memory and --host-memory go together: pass both to plan for another machine");
  }
  memory::MemoryConfig config;
  if (!options.config.empty()) {
    config = memory::load_memory_config(options.config);
  }
  if (!options.mode.empty()) {
    config.mode = memory::parse_mode(options.mode);
  }
  if (!options.strategies.empty()) {
    config.preferred_strategies = split_list(options.strategies);
  }
  memory::HardwareAssessment hardware;
  const bool other_machine = !options.device_memory.empty();
  if (other_machine) {
    hardware = memory::describe_machine(
        memory::parse_size(options.device_memory), memory::parse_size(options.host_memory),
        options.device_name, parse_compute_capability(options.compute_capability));
  } else {
    if (!options.device_name.empty() || !options.compute_capability.empty()) {
      throw InvalidInputError(
          "--device-name and --compute-capability describe another machine; pass them with "
          "--device-memory and --host-memory");
    }
    std::optional<std::uint64_t> limit;
    if (!options.memory_limit.empty()) {
      limit = memory::parse_size(options.memory_limit);
    }
    hardware = memory::assess_this_machine(limit);
  }
  memory::MemoryManager manager(config, hardware);
  const std::vector<memory::LoadStrategy> candidates = manager.candidates();

  std::filesystem::path model_path =
      options.model.empty() ? default_model_directory() : std::filesystem::path(options.model);
  // A reference model is written as sparse files (headers only, the data region a hole) into a
  // temporary folder, planned, and removed.
  std::optional<TemporaryFolder> sparse;
  if (!options.reference_model.empty()) {
    if (!options.model.empty()) {
      throw InvalidInputError("--model and --reference-model exclude each other; pass one");
    }
    sparse.emplace("ethereal-plan");
    model_path = sparse->path() / options.reference_model;
    write_sparse_model(model_path, options.reference_model);
  }
  const ModelDirectory model = ModelDirectory::open(model_path);
  memory::PlanRequest request;
  if (!options.images.empty()) {
    request.image_sizes.clear();
    for (const std::string& path : options.images) {
      const Image image = read_image(path);
      request.image_sizes.push_back({image.width(), image.height()});
    }
  } else if (options.width > 0) {
    request.image_sizes = {{options.width, options.height}};
  }
  if (options.width > 0) {
    request.output_size = ImageSize{options.width, options.height};
  }
  request.steps = options.steps;
  request.cfg_scale = options.cfg_scale;
  PipelineLoadOptions base;
  base.kept_blocks = config.kept_blocks;
  const memory::Planner planner(model, base);
  const memory::TierBudget budget = manager.budget();
  const std::vector<memory::StrategyPlan> plans = planner.plan_all(candidates, request, budget);
  const ImageSize output = request.output_size.value_or(
      default_output_size(request.image_sizes.back().width, request.image_sizes.back().height, 16));
  const std::vector<std::string> recommended =
      manager.get_recommended_strategy(plans, model_path.string(), output);

  // Upgrade advice: what each strategy that does not fit needs beyond the budget.
  nlohmann::json advice = nlohmann::json::array();
  for (const memory::StrategyPlan& plan : plans) {
    if (!plan.fits) {
      advice.push_back(
          {{"strategy", plan.strategy.name},
           {"additional_bytes", plan.shortfall_bytes},
           {"tier", plan.peak_bytes.at("device") > budget.device_bytes ? "device" : "host"}});
    }
  }

  if (options.json) {
    nlohmann::json json = {{"model", model_path.string()},
                           {"width", output.width},
                           {"height", output.height},
                           {"steps", options.steps},
                           {"cfg_scale", options.cfg_scale},
                           {"mode", memory::mode_name(config.mode)},
                           {"machine", hardware.to_json()},
                           {"budget",
                            {{"device_bytes", budget.device_bytes},
                             {"host_bytes", budget.host_bytes},
                             {"device_is_host", budget.device_is_host},
                             {"margin_bytes", config.memory_threshold_bytes()}}},
                           {"strategies", nlohmann::json::array()},
                           {"recommended", recommended},
                           {"upgrade_advice", advice}};
    for (const memory::StrategyPlan& plan : plans) {
      json["strategies"].push_back(plan_json(plan));
    }
    std::cout << json.dump(2) << "\n";
    return 0;
  }

  std::printf(
      "Plan for %s, %dx%d output, %d steps, CFG %g, mode %s\n",
      options.reference_model.empty() ? model_path.c_str() : options.reference_model.c_str(),
      output.width, output.height, options.steps, options.cfg_scale,
      std::string(memory::mode_name(config.mode)).c_str());
  std::printf("Machine: %s; budget %s %s (after a %s margin)%s\n\n", hardware.device_name.c_str(),
              format_mib(budget.device_bytes).c_str(),
              budget.device_is_host ? "of host memory" : "of device memory",
              format_mib(config.memory_threshold_bytes()).c_str(),
              budget.device_is_host
                  ? ""
                  : fmt::format(", {} of host memory", format_mib(budget.host_bytes)).c_str());
  std::printf("%-22s %-5s %-8s %12s %12s %12s %12s %12s\n", "strategy", "fits", "work mem",
              "weights", "peak", "text enc.", "denoising", "vae decode");
  auto stage = [](const memory::StrategyPlan& plan, const char* name) {
    auto it = plan.stage_peak_bytes.find(name);
    return it == plan.stage_peak_bytes.end() ? std::string("-") : format_mib(it->second);
  };
  for (const memory::StrategyPlan& plan : plans) {
    std::printf("%-22s %-5s %-8s %12s %12s %12s %12s %12s\n", plan.strategy.name.c_str(),
                plan.fits ? "yes" : "no", plan.strategy.chunked_attention ? "reduced" : "full",
                format_mib(plan.weight_bytes).c_str(),
                format_mib(plan.peak_bytes.at("device")).c_str(),
                stage(plan, "text_encoding").c_str(), stage(plan, "denoising").c_str(),
                stage(plan, "vae_decode").c_str());
  }
  std::printf("\n");
  if (recommended.empty()) {
    std::printf("No strategy fits.\n");
  } else {
    std::printf("Recommended order: %s\n", fmt::format("{}", fmt::join(recommended, ", ")).c_str());
  }
  for (const memory::StrategyPlan& plan : plans) {
    if (!plan.fits) {
      std::printf("- %s does not fit: %s\n", plan.strategy.name.c_str(), plan.reason.c_str());
    }
  }
  return 0;
}

}  // namespace

Command add_plan_command(CLI::App& parent, const GlobalOptions& /*global*/) {
  auto options = std::make_shared<PlanOptions>();
  CLI::App* app = parent.add_subcommand(
      "plan", "Dry-run plan of every strategy for an edit: peak memory per tier and stage");
  app->add_option("--model", options->model,
                  "Diffusers model directory (default: the tiny built-in model)");
  app->add_option("--reference-model", options->reference_model,
                  "Plan a published model from its exact tensor shapes, without its weights: "
                  "qwen-image-edit-2511 (written as sparse files to a temporary folder)")
      ->check(CLI::IsMember(reference_model_names()));
  app->add_option("--image", options->images,
                  "Input images whose sizes the plan uses (default: one 1024x1024 image)");
  app->add_option("--width", options->width, "Output width in pixels")->check(CLI::Range(16, 8192));
  app->add_option("--height", options->height, "Output height in pixels")
      ->check(CLI::Range(16, 8192));
  app->add_option("--steps", options->steps, "Denoising steps")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("--cfg-scale", options->cfg_scale, "CFG scale; above 1 adds the negative pass")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  app->add_option("--strategies", options->strategies,
                  "Comma-separated candidates (default: the configuration's preference list)");
  app->add_option("--mode", options->mode,
                  "Ranking of the strategies that fit: adaptive, performance, memory, quality");
  app->add_option("--config", options->config, "YAML configuration file");
  app->add_option("--memory-limit", options->memory_limit,
                  "Plan as if the engine may reserve at most SIZE on this machine");
  app->add_option("--device-memory", options->device_memory,
                  "Plan for another machine: its device memory (e.g. 24GiB); with --host-memory");
  app->add_option("--host-memory", options->host_memory,
                  "Plan for another machine: its host memory (e.g. 64GiB)");
  app->add_option("--device-name", options->device_name,
                  "Plan for another machine: its accelerator's name (empty: a CPU machine whose "
                  "device is host memory)");
  app->add_option("--compute-capability", options->compute_capability,
                  "Plan for another machine: the GPU's compute capability, e.g. 8.9 (fp8 matmul "
                  "needs 8.9 or higher)");
  app->add_flag("--json", options->json, "Print one JSON document on standard output");
  Command command;
  command.app = app;
  command.run = [options]() { return run_plan(*options); };
  return command;
}

}  // namespace ethereal::cli
