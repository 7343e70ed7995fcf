// ethereal history: recent run records and per-strategy statistics from the history database.
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <system_error>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "memory/history.h"
#include "memory/paths.h"
#include "memory/run_log.h"

namespace ethereal::cli {

namespace {

namespace fs = std::filesystem;

struct HistoryOptions {
  bool json = false;
  std::string database;  // empty: the default path
  std::size_t limit = 20;
};

std::string format_step_time(const std::optional<double>& seconds) {
  return seconds ? fmt::format("{:.2f}", *seconds) : "-";
}

void print_runs(const std::vector<memory::RunRecord>& runs) {
  std::cout << fmt::format(
      "{:<20}  {:<24}  {:<6}  {:<18}  {:<13}  {:>11}  {:>11}  {:>7}  {:>7}  "
      "{:>5}\n",
      "time (UTC)", "model", "size", "strategy", "outcome", "peak device", "peak host", "load s",
      "s/step", "steps");
  for (const memory::RunRecord& run : runs) {
    std::cout << fmt::format(
        "{:<20}  {:<24}  {:<6}  {:<18}  {:<13}  {:>11}  {:>11}  {:>7.2f}  {:>7.2f}  {:>5}\n",
        run.timestamp_utc, run.model, run.size_bucket, run.strategy,
        memory::run_outcome_name(run.outcome), memory::format_memory_size(run.peak_device_bytes),
        memory::format_memory_size(run.peak_host_bytes), run.load_s, run.step_s, run.steps);
  }
}

void print_strategies(const std::vector<memory::StrategyStats>& strategies) {
  std::cout << fmt::format("{:<18}  {:>5}  {:>12}  {:>5}  {:>6}  {:>13}\n", "strategy", "runs",
                           "success rate", "OOM", "errors", "median s/step");
  for (const memory::StrategyStats& stats : strategies) {
    std::cout << fmt::format("{:<18}  {:>5}  {:>11.0f}%  {:>5}  {:>6}  {:>13}\n", stats.strategy,
                             stats.runs, 100.0 * stats.success_rate, stats.out_of_memory,
                             stats.errors, format_step_time(stats.median_step_s));
  }
}

int run_history(const HistoryOptions& options) {
  const fs::path path =
      options.database.empty() ? memory::default_history_path() : fs::path(options.database);

  // Listing never creates a database, so a missing file only means that nothing ran yet.
  std::error_code error;
  if (!fs::exists(path, error)) {
    if (options.json) {
      const nlohmann::json document = {{"database", path.string()},
                                       {"runs", nlohmann::json::array()},
                                       {"strategies", nlohmann::json::array()}};
      std::cout << document.dump(2) << "\n";
    } else {
      std::cout << fmt::format("No runs recorded yet (no history database at {}).\n",
                               path.string());
    }
    return 0;
  }

  const memory::HistoryStore store = memory::HistoryStore::open(path);
  const std::vector<memory::RunRecord> runs = store.runs({}, options.limit);
  const std::vector<memory::StrategyStats> strategies = store.stats();

  if (options.json) {
    nlohmann::json document = {{"database", path.string()},
                               {"runs", nlohmann::json::array()},
                               {"strategies", nlohmann::json::array()}};
    for (const memory::RunRecord& run : runs) {
      document["runs"].push_back(memory::to_json(run));
    }
    for (const memory::StrategyStats& stats : strategies) {
      document["strategies"].push_back(memory::to_json(stats));
    }
    std::cout << document.dump(2) << "\n";
    return 0;
  }

  std::cout << fmt::format("History database: {}\n", path.string());
  if (runs.empty()) {
    std::cout << "No runs recorded yet.\n";
    return 0;
  }
  std::int64_t total_runs = 0;
  for (const memory::StrategyStats& stats : strategies) {
    total_runs += stats.runs;
  }
  std::cout << fmt::format("\nRecent runs (newest first, {} of {})\n", runs.size(), total_runs);
  print_runs(runs);
  std::cout << "\nStrategies (all recorded runs)\n";
  print_strategies(strategies);
  return 0;
}

}  // namespace

Command add_history_command(CLI::App& parent, const GlobalOptions& /*global*/) {
  auto options = std::make_shared<HistoryOptions>();
  CLI::App* app = parent.add_subcommand(
      "history", "Print recent runs and per-strategy success rates from the history database");
  app->add_flag("--json", options->json,
                "Print one JSON document on standard output (sizes in bytes, times in seconds)");
  app->add_option("--db", options->database,
                  "History database file (default: $XDG_CACHE_HOME/ethereal/history.sqlite, or "
                  "~/.cache/ethereal/history.sqlite)");
  app->add_option("--limit", options->limit, "Number of recent runs to list")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  Command command;
  command.app = app;
  command.run = [options]() { return run_history(*options); };
  return command;
}

}  // namespace ethereal::cli
