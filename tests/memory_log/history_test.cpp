#include "memory/history.h"

#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "memory/timestamp.h"
#include "memory_log/test_files.h"
#include "runtime/error.h"

namespace ethereal::test {
namespace {

using memory::HistoryStore;
using memory::RunOutcome;
using memory::RunRecord;
using memory::WorkloadKey;

constexpr std::uint64_t kGiB = 1024ull * 1024 * 1024;
constexpr char kMachine[] = "Test CPU | 16 cores | 64 GiB | NVIDIA H200";

// A fixed "now" so that ages do not depend on when the test runs: 2026-03-01T00:00:00Z.
std::chrono::system_clock::time_point fixed_now() {
  return std::chrono::system_clock::time_point(std::chrono::seconds(1772323200));
}

RunRecord make_run(std::string strategy, RunOutcome outcome, double step_s,
                   std::string timestamp = "2026-02-28T12:00:00Z") {
  RunRecord run;
  run.timestamp_utc = std::move(timestamp);
  run.hardware_fingerprint = kMachine;
  run.model = "Qwen-Image-Edit-2511";
  run.size_bucket = "1MP";
  run.strategy = std::move(strategy);
  run.outcome = outcome;
  run.peak_device_bytes = 9 * kGiB;
  run.peak_host_bytes = 3 * kGiB;
  run.load_s = 12.5;
  run.step_s = step_s;
  run.total_s = 12.5 + 40 * step_s;
  run.steps = 40;
  run.details_json = R"({"fallbacks":[],"lora":null})";
  return run;
}

WorkloadKey key_for(const std::string& strategy) {
  return {kMachine, "Qwen-Image-Edit-2511", "1MP", strategy};
}

// Sets PRAGMA user_version of a closed database directly.
void set_user_version(const std::filesystem::path& path, int version) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  const std::string sql = "PRAGMA user_version = " + std::to_string(version);
  EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
}

void expect_invalid_input_naming(const std::filesystem::path& path, const std::string& part) {
  try {
    HistoryStore::open(path);
    FAIL() << "expected InvalidInputError";
  } catch (const InvalidInputError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
    EXPECT_NE(message.find(part), std::string::npos) << message;
  }
}

TEST(HistoryStore, RecordsAndReadsBackEveryField) {
  const TemporaryDirectory dir;
  HistoryStore store = HistoryStore::open(dir / "sub" / "history.sqlite");
  const RunRecord run = make_run("fp8_optimized", RunOutcome::success, 2.5);
  const std::int64_t id = store.record(run);
  EXPECT_GT(id, 0);

  const std::vector<RunRecord> runs = store.runs();
  ASSERT_EQ(runs.size(), 1u);
  const RunRecord& read = runs[0];
  EXPECT_EQ(read.id, id);
  EXPECT_EQ(read.timestamp_utc, run.timestamp_utc);
  EXPECT_EQ(read.hardware_fingerprint, run.hardware_fingerprint);
  EXPECT_EQ(read.model, run.model);
  EXPECT_EQ(read.size_bucket, run.size_bucket);
  EXPECT_EQ(read.strategy, run.strategy);
  EXPECT_EQ(read.outcome, run.outcome);
  EXPECT_EQ(read.peak_device_bytes, run.peak_device_bytes);
  EXPECT_EQ(read.peak_host_bytes, run.peak_host_bytes);
  EXPECT_DOUBLE_EQ(read.load_s, run.load_s);
  EXPECT_DOUBLE_EQ(read.step_s, run.step_s);
  EXPECT_DOUBLE_EQ(read.total_s, run.total_s);
  EXPECT_EQ(read.steps, run.steps);
  EXPECT_EQ(nlohmann::json::parse(read.details_json), nlohmann::json::parse(run.details_json));
}

TEST(HistoryStore, RunsAreNewestFirstWithFilterAndLimit) {
  const TemporaryDirectory dir;
  HistoryStore store = HistoryStore::open(dir / "history.sqlite");
  store.record(make_run("fp16_full", RunOutcome::out_of_memory, 0.0, "2026-02-01T00:00:00Z"));
  store.record(make_run("fp8_optimized", RunOutcome::success, 2.0, "2026-02-03T00:00:00Z"));
  store.record(make_run("fp8_optimized", RunOutcome::success, 2.2, "2026-02-02T00:00:00Z"));
  store.record(make_run("nf4_quantized", RunOutcome::error, 0.0, "2026-02-04T00:00:00Z"));

  const std::vector<RunRecord> all = store.runs();
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all[0].timestamp_utc, "2026-02-04T00:00:00Z");
  EXPECT_EQ(all[1].timestamp_utc, "2026-02-03T00:00:00Z");
  EXPECT_EQ(all[3].timestamp_utc, "2026-02-01T00:00:00Z");

  EXPECT_EQ(store.runs({}, 2).size(), 2u);
  memory::RunFilter by_strategy;
  by_strategy.strategy = "fp8_optimized";
  EXPECT_EQ(store.runs(by_strategy).size(), 2u);
  memory::RunFilter by_outcome;
  by_outcome.outcome = RunOutcome::out_of_memory;
  const std::vector<RunRecord> ooms = store.runs(by_outcome);
  ASSERT_EQ(ooms.size(), 1u);
  EXPECT_EQ(ooms[0].strategy, "fp16_full");
  memory::RunFilter other_model;
  other_model.model = "another-model";
  EXPECT_TRUE(store.runs(other_model).empty());
}

TEST(HistoryStore, TimestampsAreStoredInUtc) {
  const TemporaryDirectory dir;
  HistoryStore store = HistoryStore::open(dir / "history.sqlite");
  store.record(make_run("fp16_full", RunOutcome::success, 1.0, "2026-01-23T12:00:00+02:00"));
  EXPECT_EQ(store.runs()[0].timestamp_utc, "2026-01-23T10:00:00Z");

  RunRecord now = make_run("fp16_full", RunOutcome::success, 1.0, "");
  store.record(now);
  const std::string latest = store.runs()[0].timestamp_utc;
  EXPECT_EQ(latest.size(), 20u) << latest;
  EXPECT_EQ(latest.back(), 'Z') << latest;
}

TEST(HistoryStore, StatsPerStrategy) {
  const TemporaryDirectory dir;
  HistoryStore store = HistoryStore::open(dir / "history.sqlite");
  store.record(make_run("fp8_optimized", RunOutcome::success, 2.0));
  store.record(make_run("fp8_optimized", RunOutcome::success, 4.0));
  store.record(make_run("fp8_optimized", RunOutcome::success, 3.0));
  store.record(make_run("fp8_optimized", RunOutcome::out_of_memory, 0.0));
  store.record(make_run("cpu_offload", RunOutcome::success, 9.0));
  store.record(make_run("cpu_offload", RunOutcome::success, 7.0));
  store.record(make_run("fp16_full", RunOutcome::out_of_memory, 0.0));
  store.record(make_run("fp16_full", RunOutcome::error, 0.0));

  const std::vector<memory::StrategyStats> stats = store.stats();
  ASSERT_EQ(stats.size(), 3u);
  EXPECT_EQ(stats[0].strategy, "cpu_offload");
  EXPECT_EQ(stats[0].runs, 2);
  EXPECT_DOUBLE_EQ(stats[0].success_rate, 1.0);
  ASSERT_TRUE(stats[0].median_step_s.has_value());
  EXPECT_DOUBLE_EQ(*stats[0].median_step_s, 8.0);  // even count: mean of the middle two

  EXPECT_EQ(stats[1].strategy, "fp16_full");
  EXPECT_EQ(stats[1].runs, 2);
  EXPECT_EQ(stats[1].successes, 0);
  EXPECT_EQ(stats[1].out_of_memory, 1);
  EXPECT_EQ(stats[1].errors, 1);
  EXPECT_DOUBLE_EQ(stats[1].success_rate, 0.0);
  EXPECT_FALSE(stats[1].median_step_s.has_value());

  EXPECT_EQ(stats[2].strategy, "fp8_optimized");
  EXPECT_EQ(stats[2].runs, 4);
  EXPECT_EQ(stats[2].successes, 3);
  EXPECT_EQ(stats[2].out_of_memory, 1);
  EXPECT_DOUBLE_EQ(stats[2].success_rate, 0.75);
  ASSERT_TRUE(stats[2].median_step_s.has_value());
  EXPECT_DOUBLE_EQ(*stats[2].median_step_s, 3.0);  // the OOM run's step time is not counted

  memory::RunFilter one_strategy;
  one_strategy.strategy = "fp16_full";
  EXPECT_EQ(store.stats(one_strategy).size(), 1u);
}

TEST(HistoryStore, MedianStepTimeOverSuccessesOfOneWorkload) {
  const TemporaryDirectory dir;
  HistoryStore store = HistoryStore::open(dir / "history.sqlite");
  store.record(make_run("nf4_quantized", RunOutcome::success, 5.0));
  store.record(make_run("nf4_quantized", RunOutcome::success, 1.0));
  store.record(make_run("nf4_quantized", RunOutcome::success, 3.0));
  store.record(make_run("nf4_quantized", RunOutcome::error, 100.0));
  RunRecord other_size = make_run("nf4_quantized", RunOutcome::success, 50.0);
  other_size.size_bucket = "4MP";
  store.record(other_size);

  const std::optional<double> median = store.median_step_s(key_for("nf4_quantized"));
  ASSERT_TRUE(median.has_value());
  EXPECT_DOUBLE_EQ(*median, 3.0);
  EXPECT_FALSE(store.median_step_s(key_for("fp16_full")).has_value());
}

TEST(HistoryStore, FailedWithOomWithinMaxAge) {
  const TemporaryDirectory dir;
  HistoryStore store = HistoryStore::open(dir / "history.sqlite");
  store.record(make_run("fp16_full", RunOutcome::out_of_memory, 0.0, "2026-02-20T00:00:00Z"));
  store.record(make_run("fp8_optimized", RunOutcome::success, 2.0, "2026-02-20T00:00:00Z"));
  store.record(make_run("nf4_quantized", RunOutcome::out_of_memory, 0.0, "2025-12-01T00:00:00Z"));

  EXPECT_TRUE(store.failed_with_oom(key_for("fp16_full"), 30.0, fixed_now()));
  EXPECT_FALSE(store.failed_with_oom(key_for("fp16_full"), 5.0, fixed_now()));
  EXPECT_FALSE(store.failed_with_oom(key_for("fp8_optimized"), 30.0, fixed_now()));
  EXPECT_FALSE(store.failed_with_oom(key_for("nf4_quantized"), 30.0, fixed_now()));
  EXPECT_TRUE(store.failed_with_oom(key_for("nf4_quantized"), 1e9, fixed_now()));

  WorkloadKey other_machine = key_for("fp16_full");
  other_machine.hardware_fingerprint = "Other CPU | 8 cores | 32 GiB | no GPU";
  EXPECT_FALSE(store.failed_with_oom(other_machine, 30.0, fixed_now()));
  EXPECT_THROW(store.failed_with_oom(key_for("fp16_full"), -1.0, fixed_now()),
               std::invalid_argument);
}

TEST(HistoryStore, PruneDeletesOldRecords) {
  const TemporaryDirectory dir;
  HistoryStore store = HistoryStore::open(dir / "history.sqlite");
  store.record(make_run("fp16_full", RunOutcome::out_of_memory, 0.0, "2025-12-01T00:00:00Z"));
  store.record(make_run("fp16_full", RunOutcome::success, 1.0, "2026-01-15T00:00:00Z"));
  store.record(make_run("fp16_full", RunOutcome::success, 1.0, "2026-02-25T00:00:00Z"));

  EXPECT_EQ(store.prune(memory::kDefaultHistoryMaxAgeDays, fixed_now()), 2u);
  const std::vector<RunRecord> runs = store.runs();
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].timestamp_utc, "2026-02-25T00:00:00Z");
  EXPECT_FALSE(store.failed_with_oom(key_for("fp16_full"), 1e9, fixed_now()));
  EXPECT_EQ(store.prune(1e9, fixed_now()), 0u);
  EXPECT_THROW(store.prune(std::nan(""), fixed_now()), std::invalid_argument);
}

TEST(HistoryStore, RejectsInvalidRecords) {
  const TemporaryDirectory dir;
  HistoryStore store = HistoryStore::open(dir / "history.sqlite");
  RunRecord run = make_run("fp16_full", RunOutcome::success, 1.0);

  RunRecord no_strategy = run;
  no_strategy.strategy.clear();
  EXPECT_THROW(store.record(no_strategy), std::invalid_argument);
  RunRecord bad_time = run;
  bad_time.timestamp_utc = "yesterday";
  EXPECT_THROW(store.record(bad_time), std::invalid_argument);
  RunRecord bad_details = run;
  bad_details.details_json = "{not json";
  EXPECT_THROW(store.record(bad_details), std::invalid_argument);
  RunRecord negative_time = run;
  negative_time.step_s = -1.0;
  EXPECT_THROW(store.record(negative_time), std::invalid_argument);
  RunRecord huge = run;
  huge.peak_host_bytes = ~std::uint64_t{0};
  EXPECT_THROW(store.record(huge), std::invalid_argument);
  EXPECT_TRUE(store.runs().empty());
}

TEST(HistoryStore, UsesWalMode) {
  const TemporaryDirectory dir;
  const auto path = dir / "history.sqlite";
  {
    HistoryStore store = HistoryStore::open(path);
    EXPECT_EQ(store.journal_mode(), "wal");
    store.record(make_run("fp16_full", RunOutcome::success, 1.0));
    EXPECT_TRUE(std::filesystem::exists(path.string() + "-wal"));
  }
  // Bytes 18 and 19 of the database header are the file format versions, 2 in WAL mode.
  std::ifstream in(path, std::ios::binary);
  char header[20] = {};
  in.read(header, sizeof(header));
  ASSERT_TRUE(in);
  EXPECT_EQ(std::string(header, 15), "SQLite format 3");
  EXPECT_EQ(header[18], 2);
  EXPECT_EQ(header[19], 2);
}

TEST(HistoryStore, RecordSurvivesKilledProcess) {
  const TemporaryDirectory dir;
  const auto path = dir / "history.sqlite";
  HistoryStore::open(path);  // the schema exists before the child starts

  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    HistoryStore store = HistoryStore::open(path);
    RunRecord run = make_run("sequential_offload", RunOutcome::success, 42.0);
    run.details_json = R"({"killed":true})";
    store.record(run);
    ::raise(SIGKILL);  // the store is never closed, so no checkpoint runs
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGKILL);

  HistoryStore store = HistoryStore::open(path);
  const std::vector<RunRecord> runs = store.runs();
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].strategy, "sequential_offload");
  EXPECT_DOUBLE_EQ(runs[0].step_s, 42.0);
  EXPECT_EQ(nlohmann::json::parse(runs[0].details_json)["killed"], true);
}

TEST(HistoryStore, TwoConnectionsShareOneFile) {
  const TemporaryDirectory dir;
  const auto path = dir / "history.sqlite";
  HistoryStore first = HistoryStore::open(path);
  HistoryStore second = HistoryStore::open(path);
  first.record(make_run("fp16_full", RunOutcome::success, 1.0));
  second.record(make_run("fp8_optimized", RunOutcome::success, 2.0));
  EXPECT_EQ(first.runs().size(), 2u);
  EXPECT_EQ(second.runs().size(), 2u);
}

TEST(HistoryStore, NewerSchemaIsRejected) {
  const TemporaryDirectory dir;
  const auto path = dir / "history.sqlite";
  HistoryStore::open(path).record(make_run("fp16_full", RunOutcome::success, 1.0));
  set_user_version(path, memory::kHistorySchemaVersion + 98);
  expect_invalid_input_naming(path, "schema version 99");
}

TEST(HistoryStore, CorruptFileIsRejected) {
  const TemporaryDirectory dir;
  const auto path = dir / "history.sqlite";
  {
    std::ofstream out(path, std::ios::binary);
    for (int i = 0; i < 512; ++i) {
      out << "this is not a database ";
    }
  }
  expect_invalid_input_naming(path, "not a valid SQLite database");
}

TEST(HistoryStore, ForeignDatabaseIsRejected) {
  const TemporaryDirectory dir;
  const auto path = dir / "other.sqlite";
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE notes (text TEXT)", nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  expect_invalid_input_naming(path, "not an ethereal history database");
}

TEST(HistoryStore, DirectoryPathIsRejected) {
  const TemporaryDirectory dir;
  expect_invalid_input_naming(dir.path(), "is a directory");
}

TEST(HistoryJson, SnakeCaseWithUnits) {
  RunRecord run = make_run("fp8_optimized", RunOutcome::out_of_memory, 2.0);
  run.id = 7;
  const nlohmann::json json = memory::to_json(run);
  EXPECT_EQ(json["id"], 7);
  EXPECT_EQ(json["outcome"], "out_of_memory");
  EXPECT_EQ(json["peak_device_bytes"], 9 * kGiB);
  EXPECT_EQ(json["step_s"], 2.0);
  EXPECT_TRUE(json["details"].is_object());
  EXPECT_TRUE(json["details"]["fallbacks"].is_array());

  memory::StrategyStats stats;
  stats.strategy = "fp8_optimized";
  stats.runs = 4;
  stats.successes = 3;
  stats.out_of_memory = 1;
  stats.success_rate = 0.75;
  const nlohmann::json stats_json = memory::to_json(stats);
  EXPECT_EQ(stats_json["success_rate"], 0.75);
  EXPECT_TRUE(stats_json["median_step_s"].is_null());
}

TEST(SizeBucket, NamedByUpperBound) {
  struct Case {
    int width;
    int height;
    const char* bucket;
  };
  const Case cases[] = {
      {64, 64, "0.25MP"},   {512, 512, "0.25MP"}, {513, 512, "0.5MP"}, {1024, 512, "0.5MP"},
      {1024, 1024, "1MP"},  {1024, 1025, "2MP"},  {1448, 1448, "2MP"}, {2048, 2048, "4MP"},
      {2048, 2049, "4MP+"}, {8192, 8192, "4MP+"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(memory::size_bucket(c.width, c.height), c.bucket) << c.width << "x" << c.height;
  }
  EXPECT_THROW(memory::size_bucket(0, 512), InvalidInputError);
  EXPECT_THROW(memory::size_bucket(512, -1), InvalidInputError);
}

TEST(HardwareFingerprint, StableAcrossSmallChanges) {
  const std::string fingerprint = memory::hardware_fingerprint(
      "  Intel(R) Xeon(R)   Platinum 8480+ ", 16, 64 * kGiB - 700ull * 1024 * 1024,
      {"NVIDIA H200", "NVIDIA  A100"});
  EXPECT_EQ(fingerprint,
            "Intel(R) Xeon(R) Platinum 8480+ | 16 cores | 63 GiB | NVIDIA A100, NVIDIA H200");
  EXPECT_EQ(memory::hardware_fingerprint("Intel(R) Xeon(R) Platinum 8480+", 16,
                                         64 * kGiB - 600ull * 1024 * 1024,
                                         {"NVIDIA A100", "NVIDIA H200"}),
            fingerprint);
  EXPECT_EQ(memory::hardware_fingerprint("AMD EPYC 9654", 8, 32 * kGiB, {}),
            "AMD EPYC 9654 | 8 cores | 32 GiB | no GPU");
}

TEST(UtcTimestamp, FormatsIso8601) {
  EXPECT_EQ(memory::format_utc_timestamp(fixed_now()), "2026-03-01T00:00:00Z");
}

}  // namespace
}  // namespace ethereal::test
