// ethereal quantize: writes a copy of a model directory with quantised linear weights.
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "models/tiny_model.h"
#include "pipeline/quantize_model.h"

namespace ethereal::cli {

namespace {

struct QuantizeCommandOptions {
  std::string model;
  std::string format;
  std::string output;
  std::vector<std::string> keep;
  bool force = false;
  bool json = false;
};

nlohmann::json report_json(const QuantizeModelOptions& options, const QuantizeModelReport& report) {
  nlohmann::json components = nlohmann::json::array();
  for (const QuantizedComponentReport& component : report.components) {
    components.push_back({{"component", component.component},
                          {"tensors", component.tensors},
                          {"quantized_layers", component.quantized_layers},
                          {"source_bytes", component.source_bytes},
                          {"output_bytes", component.output_bytes}});
  }
  return {{"model", options.model.string()},
          {"output", options.output.string()},
          {"format", quant::quant_format_name(options.format)},
          {"keep", options.keep},
          {"components", components},
          {"time_s", report.seconds}};
}

void print_text(const QuantizeModelOptions& options, const QuantizeModelReport& report) {
  std::cout << fmt::format("wrote {} ({}) in {:.1f} s\n", options.output.string(),
                           quant::quant_format_name(options.format), report.seconds);
  for (const QuantizedComponentReport& component : report.components) {
    std::cout << fmt::format("  {:<13} {} layers quantised, {} tensors, {:.1f} MiB -> {:.1f} MiB\n",
                             component.component, component.quantized_layers, component.tensors,
                             static_cast<double>(component.source_bytes) / (1024.0 * 1024.0),
                             static_cast<double>(component.output_bytes) / (1024.0 * 1024.0));
  }
}

}  // namespace

Command add_quantize_command(CLI::App& parent, const GlobalOptions& /*global*/) {
  auto options = std::make_shared<QuantizeCommandOptions>();
  CLI::App* app = parent.add_subcommand(
      "quantize",
      "Write a copy of a model directory with the transformer's and the text encoder's linear "
      "weights quantised (see docs/quantization.md)");
  app->add_option("--model", options->model,
                  "Diffusers model directory to read (default: the tiny built-in model)");
  app->add_option("--format", options->format, "Weight format of the quantised layers")
      ->required()
      ->check(CLI::IsMember({"fp8_e4m3", "nf4", "int8"}));
  app->add_option("--output", options->output,
                  "Directory to create; its parent must exist. Written to a temporary "
                  "directory and renamed at the end")
      ->required();
  app->add_option("--keep", options->keep,
                  "Module to keep unquantised, with everything below it (diffusers names, for "
                  "example transformer_blocks.0 or model.layers.27.mlp.down_proj); repeatable");
  app->add_flag("--force", options->force, "Replace the output directory if it exists");
  app->add_flag("--json", options->json, "Print the result as one JSON document");

  Command command;
  command.app = app;
  command.run = [options]() {
    QuantizeModelOptions library_options;
    library_options.model =
        options->model.empty() ? default_model_directory() : std::filesystem::path(options->model);
    library_options.output = options->output;
    library_options.format = quant::parse_quant_format(options->format);
    library_options.keep = options->keep;
    library_options.force = options->force;
    spdlog::debug("settings: model={} format={} output={} keep={} force={}",
                  library_options.model.string(), options->format, options->output,
                  fmt::join(options->keep, ","), options->force);
    const QuantizeModelReport report = quantize_model(library_options);
    if (options->json) {
      std::cout << report_json(library_options, report).dump(2) << "\n";
    } else {
      print_text(library_options, report);
    }
    return 0;
  };
  return command;
}

}  // namespace ethereal::cli
