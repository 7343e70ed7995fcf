// Entry point of the ethereal program: parses options and calls the library.
#include <exception>
#include <new>
#include <vector>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "cli/command.h"
#include "memory/manager.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace {

constexpr int kExitSuccess = 0;
constexpr int kExitFailure = 1;
constexpr int kExitInvalidInput = 2;
constexpr int kExitOutOfMemory = 3;

// Logs go to standard error so that --json output on standard output stays one document.
void configure_logging(const std::string& level) {
  auto logger = spdlog::stderr_color_mt("ethereal");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
  spdlog::set_level(spdlog::level::from_str(level));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("ethereal: edit images with large diffusion models within the memory you have");
  app.set_version_flag("--version", std::string("ethereal ") + ETHEREAL_VERSION);
  app.require_subcommand(1);

  ethereal::cli::GlobalOptions global;
  app.add_option("--threads", global.threads,
                 "Worker threads for kernels and oneDNN (default: every usable core)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--log-level", global.log_level, "Log level on standard error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}))
      ->capture_default_str();

  std::vector<ethereal::cli::Command> commands;
  commands.push_back(ethereal::cli::add_edit_command(app, global));
  commands.push_back(ethereal::cli::add_profile_command(app, global));
  commands.push_back(ethereal::cli::add_run_component_command(app, global));
  commands.push_back(ethereal::cli::add_quantize_command(app, global));
  commands.push_back(ethereal::cli::add_history_command(app, global));
  commands.push_back(ethereal::cli::add_plan_command(app, global));
  commands.push_back(ethereal::cli::add_bench_command(app, global));

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitInvalidInput;
  }

  configure_logging(global.log_level);
  ethereal::set_thread_count(global.threads);
  spdlog::debug("settings: threads={} log_level={}", ethereal::thread_count(), global.log_level);

  for (const ethereal::cli::Command& command : commands) {
    if (!command.app->parsed()) {
      continue;
    }
    try {
      return command.run();
    } catch (const ethereal::InvalidInputError& e) {
      spdlog::error("{}", e.what());
      return kExitInvalidInput;
    } catch (const ethereal::OutOfMemoryError& e) {
      spdlog::error("{}", e.what());
      return kExitOutOfMemory;
    } catch (const ethereal::memory::MemoryExhaustedError& e) {
      spdlog::error("{}", e.what());
      return kExitOutOfMemory;
    } catch (const std::bad_alloc&) {
      spdlog::error("out of host memory (std::bad_alloc)");
      return kExitOutOfMemory;
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
      return kExitFailure;
    }
  }
  return kExitSuccess;
}
