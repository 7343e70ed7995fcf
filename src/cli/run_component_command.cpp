// ethereal run-component: one model component on tensors from a file, for parity checks.
#include <memory>

#include <fmt/format.h>

#include "cli/command.h"
#include "pipeline/component_runner.h"

namespace ethereal::cli {

namespace {

struct RunComponentOptions {
  std::string model;
  std::string component;
  std::string input;
  std::string output;
  std::string precision = "f32";
};

}  // namespace

Command add_run_component_command(CLI::App& parent, const GlobalOptions& global) {
  auto options = std::make_shared<RunComponentOptions>();
  CLI::App* app = parent.add_subcommand(
      "run-component",
      "Run one model component on tensors from a safetensors file (see docs/run-component.md)");
  app->add_option("--model", options->model,
                  "Diffusers model directory, or one holding just the component's folder")
      ->required();
  app->add_option("--component", options->component, "Component to run")
      ->required()
      ->check(CLI::IsMember(runnable_components()));
  app->add_option("--input", options->input, "Safetensors file with the input tensors")->required();
  app->add_option("--output", options->output, "Safetensors file for the outputs")->required();
  app->add_option("--precision", options->precision, "Weight and activation dtype")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  Command command;
  command.app = app;
  command.run = [options]() {
    const ModelPrecision precision =
        options->precision == "bf16" ? ModelPrecision::bf16() : ModelPrecision::f32();
    run_component(options->model, options->component, options->input, options->output, precision);
    return 0;
  };
  return command;
}

}  // namespace ethereal::cli
