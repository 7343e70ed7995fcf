// The history database: one run record per edit, kept in SQLite, read by `ethereal history`
// and by adaptive strategy selection.
//
// Durability: the database runs in WAL mode with synchronous=NORMAL, and record() commits each
// record in its own transaction. A committed record survives the process being killed right
// after record() returns. A power loss can drop the most recent commits, which is acceptable
// for a history that only steers choices. Several processes may share one database. A writer
// waits up to five seconds for another one's lock before failing.
//
// Records age out: prune(max_age_days) deletes records older than the given age (30 days by
// default), so that a machine whose drivers or memory changed is judged on recent runs.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace ethereal::memory {

inline constexpr int kHistorySchemaVersion = 1;
inline constexpr double kDefaultHistoryMaxAgeDays = 30.0;

enum class RunOutcome { success, out_of_memory, error };

// "success", "out_of_memory" or "error".
std::string_view run_outcome_name(RunOutcome outcome);
// Inverse of run_outcome_name; std::nullopt for an unknown name.
std::optional<RunOutcome> parse_run_outcome(std::string_view name);

struct RunRecord {
  std::int64_t id = 0;        // assigned by the store; record() ignores it
  std::string timestamp_utc;  // ISO 8601; empty means "now" to record()
  std::string hardware_fingerprint;
  std::string model;
  std::string size_bucket;  // as size_bucket() returns it
  std::string strategy;
  RunOutcome outcome = RunOutcome::success;
  std::uint64_t peak_device_bytes = 0;
  std::uint64_t peak_host_bytes = 0;
  double load_s = 0.0;
  double step_s = 0.0;  // mean seconds per denoising step
  double total_s = 0.0;
  int steps = 0;
  std::string details_json = "{}";  // any JSON value: fallbacks, retries, options
};

// The four fields that adaptive selection compares runs by.
struct WorkloadKey {
  std::string hardware_fingerprint;
  std::string model;
  std::string size_bucket;
  std::string strategy;
};

// Selects records: each field that is set must match exactly.
struct RunFilter {
  std::optional<std::string> hardware_fingerprint;
  std::optional<std::string> model;
  std::optional<std::string> size_bucket;
  std::optional<std::string> strategy;
  std::optional<RunOutcome> outcome;
};

struct StrategyStats {
  std::string strategy;
  std::int64_t runs = 0;
  std::int64_t successes = 0;
  std::int64_t out_of_memory = 0;
  std::int64_t errors = 0;
  double success_rate = 0.0;            // successes / runs, from 0 to 1
  std::optional<double> median_step_s;  // over successful runs; empty without one
};

class HistoryStore {
 public:
  using Clock = std::chrono::system_clock;

  // Opens the database at `path`, creating it and its parent directories when missing.
  // Throws InvalidInputError naming the file when it cannot be created or opened, is not an
  // SQLite database, is damaged, or has a schema newer than kHistorySchemaVersion (written by a
  // newer ethereal). Throws IoError for other SQLite failures.
  static HistoryStore open(const std::filesystem::path& path);

  HistoryStore(HistoryStore&& other) noexcept;
  HistoryStore& operator=(HistoryStore&& other) noexcept;
  ~HistoryStore();

  const std::filesystem::path& path() const;
  // The journal mode SQLite reports: "wal" normally, "delete" on file systems without WAL.
  std::string journal_mode() const;

  // Commits one record and returns its id. Throws std::invalid_argument for an empty model,
  // strategy or size bucket, a timestamp SQLite cannot read, a negative or non-finite time,
  // negative steps, a size above 2^63 - 1 bytes, or details_json that is not JSON.
  std::int64_t record(const RunRecord& run);

  // Matching records, newest first (by timestamp, then by id), at most `limit` of them.
  std::vector<RunRecord> runs(const RunFilter& filter = {},
                              std::optional<std::size_t> limit = std::nullopt) const;
  // One entry per strategy among the matching records, sorted by strategy name.
  std::vector<StrategyStats> stats(const RunFilter& filter = {}) const;

  // Whether a run of this workload ran out of memory within the last `max_age_days` before
  // `now`. A later success does not clear it. Callers that want the latest outcome use runs().
  bool failed_with_oom(const WorkloadKey& key, double max_age_days = kDefaultHistoryMaxAgeDays,
                       Clock::time_point now = Clock::now()) const;
  // The median step_s over successful runs of this workload; empty without one.
  std::optional<double> median_step_s(const WorkloadKey& key) const;

  // Deletes records older than `max_age_days` before `now` and returns how many went.
  // Throws std::invalid_argument for a negative or non-finite age.
  std::size_t prune(double max_age_days = kDefaultHistoryMaxAgeDays,
                    Clock::time_point now = Clock::now());

 private:
  struct Impl;
  explicit HistoryStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The request size bucket of an output of width x height pixels. Buckets are named by their
// upper bound in units of 2^20 pixels (so 1024x1024 is "1MP"): "0.25MP", "0.5MP", "1MP",
// "2MP", "4MP", and "4MP+" above that. Activation memory grows with the pixel count, so runs
// in one bucket need similar memory. Throws InvalidInputError unless both sides are positive.
std::string size_bucket(int width, int height);

// Identifies a machine for the history: "<cpu model> | <cores> cores | <host memory> GiB |
// <GPU names, sorted, comma-separated, or 'no GPU'>". Host memory is rounded to whole GiB so
// that small changes of the kernel's reservation between boots keep the fingerprint, and
// whitespace runs in names collapse to one space.
std::string hardware_fingerprint(std::string_view cpu_model, int cores,
                                 std::uint64_t host_memory_bytes,
                                 const std::vector<std::string>& gpu_names);

// JSON forms for `ethereal history --json`: snake_case keys, sizes in *_bytes, times in *_s.
// A record's details_json is embedded as a JSON value under "details".
nlohmann::json to_json(const RunRecord& run);
nlohmann::json to_json(const StrategyStats& stats);

}  // namespace ethereal::memory
