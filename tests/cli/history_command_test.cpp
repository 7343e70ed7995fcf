#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/run_command.h"
#include "memory/history.h"
#include "support/files.h"

namespace ethereal::test {
namespace {

namespace fs = std::filesystem;

class HistoryCommandTest : public ::testing::Test {
 protected:
  // Writes five runs: three fp8_optimized (one out of memory) and two cpu_offload successes.
  fs::path write_history(const fs::path& path) {
    memory::HistoryStore store = memory::HistoryStore::open(path);
    const auto record = [&store](const char* time, const char* strategy, memory::RunOutcome outcome,
                                 double step_s) {
      memory::RunRecord run;
      run.timestamp_utc = time;
      run.hardware_fingerprint = "Test CPU | 4 cores | 16 GiB | no GPU";
      run.model = "tiny";
      run.size_bucket = "0.25MP";
      run.strategy = strategy;
      run.outcome = outcome;
      run.peak_device_bytes = 3u << 30;
      run.peak_host_bytes = 1u << 30;
      run.load_s = 0.5;
      run.step_s = step_s;
      run.total_s = 0.5 + 4 * step_s;
      run.steps = 4;
      store.record(run);
    };
    record("2026-02-01T10:00:00Z", "fp8_optimized", memory::RunOutcome::out_of_memory, 0.0);
    record("2026-02-02T10:00:00Z", "fp8_optimized", memory::RunOutcome::success, 1.0);
    record("2026-02-03T10:00:00Z", "fp8_optimized", memory::RunOutcome::success, 3.0);
    record("2026-02-04T10:00:00Z", "cpu_offload", memory::RunOutcome::success, 6.0);
    record("2026-02-05T10:00:00Z", "cpu_offload", memory::RunOutcome::success, 8.0);
    return path;
  }

  test_support::TemporaryDirectory root_{"history_command"};
};

TEST_F(HistoryCommandTest, JsonListsRunsAndStrategies) {
  const fs::path db = write_history(root_ / "history.sqlite");
  const CommandResult result =
      run_ethereal({"history", "--json", "--db", db.string(), "--limit", "2"});
  ASSERT_EQ(result.exit_status, 0) << result.standard_error;
  const nlohmann::json document = nlohmann::json::parse(result.standard_output);

  EXPECT_EQ(document["database"], db.string());
  ASSERT_EQ(document["runs"].size(), 2u);
  EXPECT_EQ(document["runs"][0]["timestamp_utc"], "2026-02-05T10:00:00Z");
  EXPECT_EQ(document["runs"][0]["strategy"], "cpu_offload");
  EXPECT_EQ(document["runs"][0]["peak_device_bytes"], 3ull << 30);
  EXPECT_EQ(document["runs"][0]["step_s"], 8.0);
  EXPECT_EQ(document["runs"][0]["outcome"], "success");

  ASSERT_EQ(document["strategies"].size(), 2u);
  const nlohmann::json& fp8 = document["strategies"][1];
  EXPECT_EQ(fp8["strategy"], "fp8_optimized");
  EXPECT_EQ(fp8["runs"], 3);
  EXPECT_EQ(fp8["out_of_memory"], 1);
  EXPECT_NEAR(fp8["success_rate"].get<double>(), 2.0 / 3.0, 1e-12);
  EXPECT_EQ(fp8["median_step_s"], 2.0);
}

TEST_F(HistoryCommandTest, TextShowsRunsAndStrategyTable) {
  const fs::path db = write_history(root_ / "history.sqlite");
  const CommandResult result = run_ethereal({"history", "--db", db.string()});
  ASSERT_EQ(result.exit_status, 0) << result.standard_error;
  const std::string& text = result.standard_output;
  for (const char* part : {"History database", "Recent runs (newest first, 5 of 5)",
                           "2026-02-01T10:00:00Z", "out_of_memory", "success rate", "median s/step",
                           "cpu_offload", "fp8_optimized", "3.00 GiB"}) {
    EXPECT_NE(text.find(part), std::string::npos) << part << "\n" << text;
  }
  // fp8_optimized: 3 runs, 67% success, 1 OOM, 0 errors, median 2.00 s/step.
  EXPECT_NE(text.find("fp8_optimized           3           67%      1       0           2.00"),
            std::string::npos)
      << text;
}

TEST_F(HistoryCommandTest, MissingDatabaseMeansNoRunsYet) {
  const fs::path db = root_ / "absent.sqlite";
  const CommandResult text = run_ethereal({"history", "--db", db.string()});
  ASSERT_EQ(text.exit_status, 0) << text.standard_error;
  EXPECT_NE(text.standard_output.find("No runs recorded yet"), std::string::npos)
      << text.standard_output;

  const CommandResult json = run_ethereal({"history", "--json", "--db", db.string()});
  ASSERT_EQ(json.exit_status, 0) << json.standard_error;
  const nlohmann::json document = nlohmann::json::parse(json.standard_output);
  EXPECT_TRUE(document["runs"].empty());
  EXPECT_TRUE(document["strategies"].empty());
  EXPECT_FALSE(fs::exists(db));  // listing never creates the database
}

TEST_F(HistoryCommandTest, DefaultDatabaseUnderXdgCacheHome) {
  write_history(root_ / "cache" / "ethereal" / "history.sqlite");
  // The variable is removed here so that the child gets only the value passed to it.
  std::optional<std::string> previous;
  if (const char* value = std::getenv("XDG_CACHE_HOME")) {
    previous = value;
  }
  ::unsetenv("XDG_CACHE_HOME");
  const CommandResult result =
      run_ethereal({"history", "--json"}, {"XDG_CACHE_HOME=" + (root_ / "cache").string()});
  if (previous) {
    ::setenv("XDG_CACHE_HOME", previous->c_str(), 1);
  }
  ASSERT_EQ(result.exit_status, 0) << result.standard_error;
  const nlohmann::json document = nlohmann::json::parse(result.standard_output);
  EXPECT_EQ(document["database"], (root_ / "cache" / "ethereal" / "history.sqlite").string());
  EXPECT_EQ(document["runs"].size(), 5u);
}

TEST_F(HistoryCommandTest, CorruptDatabaseIsInvalidInput) {
  const fs::path db = root_ / "broken.sqlite";
  {
    std::ofstream out(db, std::ios::binary);
    for (int i = 0; i < 512; ++i) {
      out << "garbage bytes ";
    }
  }
  const CommandResult result = run_ethereal({"history", "--db", db.string()});
  EXPECT_EQ(result.exit_status, 2);
  EXPECT_NE(result.standard_error.find(db.string()), std::string::npos) << result.standard_error;
}

TEST_F(HistoryCommandTest, LimitMustBePositive) {
  const CommandResult result = run_ethereal({"history", "--limit", "0"});
  EXPECT_EQ(result.exit_status, 2);
}

}  // namespace
}  // namespace ethereal::test
