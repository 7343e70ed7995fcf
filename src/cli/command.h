// Subcommands of the ethereal program. Each command registers its options on a CLI11
// subcommand and sets `run`; main() calls it after parsing and maps library errors to exit
// statuses: 0 success, 2 invalid input or usage, 3 out of memory after every fallback,
// 1 any other failure.
#pragma once

#include <functional>
#include <string>

#include <CLI/CLI.hpp>

namespace ethereal::cli {

// Options shared by every command.
struct GlobalOptions {
  int threads = 0;  // 0: every usable core
  std::string log_level = "warn";
};

struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

Command add_profile_command(CLI::App& parent, const GlobalOptions& global);
Command add_edit_command(CLI::App& parent, const GlobalOptions& global);
Command add_run_component_command(CLI::App& parent, const GlobalOptions& global);
Command add_quantize_command(CLI::App& parent, const GlobalOptions& global);
Command add_history_command(CLI::App& parent, const GlobalOptions& global);
Command add_plan_command(CLI::App& parent, const GlobalOptions& global);
Command add_bench_command(CLI::App& parent, const GlobalOptions& global);

}  // namespace ethereal::cli
