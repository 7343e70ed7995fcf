#include "memory/history.h"

#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "memory/timestamp.h"
#include "runtime/error.h"

namespace ethereal::memory {

namespace {

namespace fs = std::filesystem;

constexpr int kBusyTimeoutMs = 5000;

constexpr std::string_view kSchemaSql = R"sql(
CREATE TABLE IF NOT EXISTS runs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  timestamp_utc TEXT NOT NULL,
  hardware_fingerprint TEXT NOT NULL,
  model TEXT NOT NULL,
  size_bucket TEXT NOT NULL,
  strategy TEXT NOT NULL,
  outcome TEXT NOT NULL CHECK (outcome IN ('success', 'out_of_memory', 'error')),
  peak_device_bytes INTEGER NOT NULL,
  peak_host_bytes INTEGER NOT NULL,
  load_s REAL NOT NULL,
  step_s REAL NOT NULL,
  total_s REAL NOT NULL,
  steps INTEGER NOT NULL,
  details_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_workload
  ON runs (hardware_fingerprint, model, size_bucket, strategy, timestamp_utc);
CREATE INDEX IF NOT EXISTS runs_by_time ON runs (timestamp_utc);
PRAGMA user_version = 1;
)sql";

// The record columns in the order RunRecord declares them; read_run depends on this order.
constexpr std::string_view kRunColumns =
    "id, timestamp_utc, hardware_fingerprint, model, size_bucket, strategy, outcome, "
    "peak_device_bytes, peak_host_bytes, load_s, step_s, total_s, steps, details_json";

// Parameters ?1 to ?5 hold the filter; an unset field is bound to NULL and matches every row.
constexpr std::string_view kFilterClause =
    " WHERE (?1 IS NULL OR hardware_fingerprint = ?1) AND (?2 IS NULL OR model = ?2)"
    " AND (?3 IS NULL OR size_bucket = ?3) AND (?4 IS NULL OR strategy = ?4)"
    " AND (?5 IS NULL OR outcome = ?5)";

constexpr std::string_view kTimestampFormat = "%Y-%m-%dT%H:%M:%SZ";

struct DatabaseCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using DatabaseHandle = std::unique_ptr<sqlite3, DatabaseCloser>;

[[noreturn]] void throw_sqlite_error(const fs::path& path, sqlite3* db, int code,
                                     std::string_view action) {
  const std::string detail = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(code);
  switch (code & 0xff) {
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
      throw InvalidInputError(fmt::format(
          "history database '{}' is not a valid SQLite database ({}) while {}; move the file "
          "aside or delete it, and a new one is created on the next run",
          path.string(), detail, action));
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_AUTH:
      throw InvalidInputError(
          fmt::format("cannot use history database '{}' ({}) while {}; check the path and its "
                      "permissions, or choose another file",
                      path.string(), detail, action));
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      throw IoError(fmt::format(
          "history database '{}' stayed locked by another process for {} s while {} ({}); "
          "retry when the other process has finished",
          path.string(), kBusyTimeoutMs / 1000, action, detail));
    default:
      throw IoError(
          fmt::format("history database '{}' failed while {}: {}", path.string(), action, detail));
  }
}

// A prepared statement, finalized on every exit path.
class Statement {
 public:
  Statement(sqlite3* db, const fs::path& path, std::string_view sql) : db_(db), path_(path) {
    const int code =
        sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), &statement_, nullptr);
    if (code != SQLITE_OK) {
      throw_sqlite_error(path_, db_, code, "preparing a query");
    }
  }
  ~Statement() { sqlite3_finalize(statement_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  void bind(int index, std::string_view text) {
    check(sqlite3_bind_text(statement_, index, text.data(), static_cast<int>(text.size()),
                            SQLITE_TRANSIENT));
  }
  void bind(int index, std::int64_t value) { check(sqlite3_bind_int64(statement_, index, value)); }
  void bind(int index, double value) { check(sqlite3_bind_double(statement_, index, value)); }
  void bind(int index, const std::optional<std::string>& text) {
    if (text) {
      bind(index, std::string_view(*text));
    } else {
      check(sqlite3_bind_null(statement_, index));
    }
  }

  // Advances to the next row; returns false when there is none.
  bool step(std::string_view action) {
    const int code = sqlite3_step(statement_);
    if (code == SQLITE_ROW) {
      return true;
    }
    if (code == SQLITE_DONE) {
      return false;
    }
    throw_sqlite_error(path_, db_, code, action);
  }

  bool is_null(int column) const { return sqlite3_column_type(statement_, column) == SQLITE_NULL; }
  std::int64_t int64(int column) const { return sqlite3_column_int64(statement_, column); }
  double real(int column) const { return sqlite3_column_double(statement_, column); }
  std::string text(int column) const {
    const unsigned char* text = sqlite3_column_text(statement_, column);
    const int size = sqlite3_column_bytes(statement_, column);
    return text == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(text), size);
  }

 private:
  void check(int code) {
    if (code != SQLITE_OK) {
      throw_sqlite_error(path_, db_, code, "binding a query parameter");
    }
  }

  sqlite3* db_;
  const fs::path& path_;
  sqlite3_stmt* statement_ = nullptr;
};

void bind_filter(Statement& statement, const RunFilter& filter) {
  statement.bind(1, filter.hardware_fingerprint);
  statement.bind(2, filter.model);
  statement.bind(3, filter.size_bucket);
  statement.bind(4, filter.strategy);
  std::optional<std::string> outcome;
  if (filter.outcome) {
    outcome = std::string(run_outcome_name(*filter.outcome));
  }
  statement.bind(5, outcome);
}

RunFilter workload_filter(const WorkloadKey& key, std::optional<RunOutcome> outcome) {
  return RunFilter{key.hardware_fingerprint, key.model, key.size_bucket, key.strategy, outcome};
}

std::optional<double> median(std::vector<double> values) {
  if (values.empty()) {
    return std::nullopt;
  }
  std::sort(values.begin(), values.end());
  const std::size_t middle = values.size() / 2;
  if (values.size() % 2 == 1) {
    return values[middle];
  }
  return (values[middle - 1] + values[middle]) / 2.0;
}

std::int64_t checked_bytes(std::uint64_t bytes, std::string_view field) {
  if (bytes > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
    throw std::invalid_argument(
        fmt::format("HistoryStore::record: {} = {} exceeds 2^63 - 1", field, bytes));
  }
  return static_cast<std::int64_t>(bytes);
}

void check_seconds(double seconds, std::string_view field) {
  if (!std::isfinite(seconds) || seconds < 0.0) {
    throw std::invalid_argument(fmt::format(
        "HistoryStore::record: {} = {} must be a finite, non-negative number of seconds", field,
        seconds));
  }
}

void check_not_empty(const std::string& value, std::string_view field) {
  if (value.empty()) {
    throw std::invalid_argument(fmt::format("HistoryStore::record: {} is empty", field));
  }
}

std::string collapse_whitespace(std::string_view text) {
  std::string collapsed;
  for (const char c : text) {
    const bool space = c == ' ' || c == '\t' || c == '\n' || c == '\r';
    if (!space) {
      collapsed += c;
    } else if (!collapsed.empty() && collapsed.back() != ' ') {
      collapsed += ' ';
    }
  }
  if (!collapsed.empty() && collapsed.back() == ' ') {
    collapsed.pop_back();
  }
  return collapsed;
}

}  // namespace

struct HistoryStore::Impl {
  fs::path path;
  DatabaseHandle db;
  mutable std::mutex mutex;

  void execute(std::string_view sql, std::string_view action) const {
    const std::string statements(sql);
    const int code = sqlite3_exec(db.get(), statements.c_str(), nullptr, nullptr, nullptr);
    if (code != SQLITE_OK) {
      throw_sqlite_error(path, db.get(), code, action);
    }
  }

  std::int64_t query_int64(std::string_view sql, std::string_view action) const {
    Statement statement(db.get(), path, sql);
    return statement.step(action) ? statement.int64(0) : 0;
  }

  // A timestamp in kTimestampFormat, or std::nullopt when SQLite cannot read `time`. The
  // optional `modifier` is an SQLite date modifier such as "-30.000000 days".
  std::optional<std::string> normalize_timestamp(std::string_view time,
                                                 std::string_view modifier = "+0 days") const {
    Statement statement(db.get(), path, "SELECT strftime(?1, ?2, ?3)");
    statement.bind(1, kTimestampFormat);
    statement.bind(2, time);
    statement.bind(3, modifier);
    if (!statement.step("reading a timestamp") || statement.is_null(0)) {
      return std::nullopt;
    }
    return statement.text(0);
  }

  // The timestamp `max_age_days` before `now`; an empty string, which sorts before every
  // timestamp, when that lies before year 0.
  std::string age_cutoff(double max_age_days, Clock::time_point now) const {
    if (!std::isfinite(max_age_days) || max_age_days < 0.0) {
      throw std::invalid_argument(fmt::format(
          "history: max_age_days = {} must be a finite, non-negative number", max_age_days));
    }
    // SQLite's dates end at year 0; larger ages only make the cutoff invalid, and so empty.
    const double days = std::min(max_age_days, 1e7);
    return normalize_timestamp(format_utc_timestamp(now), fmt::format("-{:.6f} days", days))
        .value_or("");
  }

  void enable_wal() const {
    Statement statement(db.get(), path, "PRAGMA journal_mode = WAL");
    const std::string mode = statement.step("switching to WAL mode") ? statement.text(0) : "";
    if (mode != "wal") {
      spdlog::warn(
          "history database '{}' could not switch to WAL mode and uses journal mode '{}' (some "
          "network file systems lack the shared memory WAL needs); each record is still "
          "committed on its own",
          path.string(), mode);
    }
    execute("PRAGMA synchronous = NORMAL", "setting synchronous mode");
  }

  // Creates the schema in an empty database. A concurrent process may have created it since
  // the version was read, so the check is repeated under the write lock.
  void create_schema() const {
    execute("BEGIN IMMEDIATE", "starting a transaction");
    try {
      const std::int64_t version = query_int64("PRAGMA user_version", "reading the version");
      if (version == 0) {
        const std::int64_t tables = query_int64(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            "listing tables");
        if (tables != 0) {
          throw InvalidInputError(fmt::format(
              "'{}' is an SQLite database with {} tables but not an ethereal history database "
              "(its schema version is 0); choose another history database file",
              path.string(), tables));
        }
        execute(kSchemaSql, "creating the schema");
      }
      execute("COMMIT", "committing the schema");
    } catch (...) {
      sqlite3_exec(db.get(), "ROLLBACK", nullptr, nullptr, nullptr);
      throw;
    }
  }

  std::vector<double> successful_step_times(const WorkloadKey& key) const {
    Statement statement(db.get(), path, "SELECT step_s FROM runs" + std::string(kFilterClause));
    bind_filter(statement, workload_filter(key, RunOutcome::success));
    std::vector<double> step_times;
    while (statement.step("reading step times")) {
      step_times.push_back(statement.real(0));
    }
    return step_times;
  }
};

namespace {

RunRecord read_run(const Statement& statement, const fs::path& path) {
  RunRecord run;
  run.id = statement.int64(0);
  run.timestamp_utc = statement.text(1);
  run.hardware_fingerprint = statement.text(2);
  run.model = statement.text(3);
  run.size_bucket = statement.text(4);
  run.strategy = statement.text(5);
  const std::string outcome = statement.text(6);
  const std::optional<RunOutcome> parsed = parse_run_outcome(outcome);
  if (!parsed) {
    throw InvalidInputError(fmt::format(
        "history database '{}': run {} has unknown outcome '{}'; move the file aside or delete it",
        path.string(), run.id, outcome));
  }
  run.outcome = *parsed;
  run.peak_device_bytes = static_cast<std::uint64_t>(std::max<std::int64_t>(statement.int64(7), 0));
  run.peak_host_bytes = static_cast<std::uint64_t>(std::max<std::int64_t>(statement.int64(8), 0));
  run.load_s = statement.real(9);
  run.step_s = statement.real(10);
  run.total_s = statement.real(11);
  run.steps = static_cast<int>(statement.int64(12));
  run.details_json = statement.text(13);
  return run;
}

}  // namespace

std::string_view run_outcome_name(RunOutcome outcome) {
  switch (outcome) {
    case RunOutcome::success: return "success";
    case RunOutcome::out_of_memory: return "out_of_memory";
    case RunOutcome::error: return "error";
  }
  throw std::invalid_argument(
      fmt::format("run_outcome_name: unknown RunOutcome {}", static_cast<int>(outcome)));
}

std::optional<RunOutcome> parse_run_outcome(std::string_view name) {
  for (const RunOutcome outcome :
       {RunOutcome::success, RunOutcome::out_of_memory, RunOutcome::error}) {
    if (run_outcome_name(outcome) == name) {
      return outcome;
    }
  }
  return std::nullopt;
}

HistoryStore::HistoryStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HistoryStore::HistoryStore(HistoryStore&& other) noexcept = default;
HistoryStore& HistoryStore::operator=(HistoryStore&& other) noexcept = default;
HistoryStore::~HistoryStore() = default;

HistoryStore HistoryStore::open(const fs::path& path) {
  if (path.has_parent_path()) {
    std::error_code error;
    fs::create_directories(path.parent_path(), error);
    if (error) {
      throw InvalidInputError(fmt::format(
          "cannot create the directory of history database '{}': {}; choose a writable location",
          path.string(), error.message()));
    }
  }
  std::error_code error;
  if (fs::is_directory(path, error)) {
    throw InvalidInputError(fmt::format(
        "history database '{}' is a directory; give the path of a file", path.string()));
  }

  sqlite3* raw = nullptr;
  const int code =
      sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
  DatabaseHandle db(raw);
  if (code != SQLITE_OK) {
    throw_sqlite_error(path, raw, code, "opening it");
  }
  sqlite3_extended_result_codes(raw, 1);
  sqlite3_busy_timeout(raw, kBusyTimeoutMs);

  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->db = std::move(db);

  // The version is read before anything writes, so a newer database is left untouched.
  const std::int64_t version = impl->query_int64("PRAGMA user_version", "reading its version");
  if (version > kHistorySchemaVersion) {
    throw InvalidInputError(fmt::format(
        "history database '{}' has schema version {}, newer than the version {} this ethereal "
        "supports; update ethereal, or choose another history database file",
        path.string(), version, kHistorySchemaVersion));
  }
  if (version < 0) {
    throw InvalidInputError(fmt::format(
        "history database '{}' has invalid schema version {}; move the file aside or delete it",
        path.string(), version));
  }
  impl->enable_wal();
  if (version == 0) {
    impl->create_schema();
  }
  return HistoryStore(std::move(impl));
}

const fs::path& HistoryStore::path() const {
  return impl_->path;
}

std::string HistoryStore::journal_mode() const {
  std::lock_guard lock(impl_->mutex);
  Statement statement(impl_->db.get(), impl_->path, "PRAGMA journal_mode");
  return statement.step("reading the journal mode") ? statement.text(0) : "";
}

std::int64_t HistoryStore::record(const RunRecord& run) {
  check_not_empty(run.model, "model");
  check_not_empty(run.strategy, "strategy");
  check_not_empty(run.size_bucket, "size_bucket");
  check_seconds(run.load_s, "load_s");
  check_seconds(run.step_s, "step_s");
  check_seconds(run.total_s, "total_s");
  if (run.steps < 0) {
    throw std::invalid_argument(
        fmt::format("HistoryStore::record: steps = {} is negative", run.steps));
  }
  const std::int64_t peak_device = checked_bytes(run.peak_device_bytes, "peak_device_bytes");
  const std::int64_t peak_host = checked_bytes(run.peak_host_bytes, "peak_host_bytes");
  const nlohmann::json details = nlohmann::json::parse(run.details_json, nullptr, false);
  if (details.is_discarded()) {
    throw std::invalid_argument("HistoryStore::record: details_json is not valid JSON: " +
                                run.details_json);
  }

  std::lock_guard lock(impl_->mutex);
  const std::string requested_time =
      run.timestamp_utc.empty() ? utc_timestamp_now() : run.timestamp_utc;
  const std::optional<std::string> timestamp = impl_->normalize_timestamp(requested_time);
  if (!timestamp) {
    throw std::invalid_argument(fmt::format(
        "HistoryStore::record: timestamp_utc '{}' is not an ISO 8601 time", run.timestamp_utc));
  }

  Statement statement(impl_->db.get(), impl_->path,
                      fmt::format("INSERT INTO runs ({}) VALUES (NULL, ?1, ?2, ?3, ?4, ?5, ?6, "
                                  "?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                                  kRunColumns));
  statement.bind(1, std::string_view(*timestamp));
  statement.bind(2, std::string_view(run.hardware_fingerprint));
  statement.bind(3, std::string_view(run.model));
  statement.bind(4, std::string_view(run.size_bucket));
  statement.bind(5, std::string_view(run.strategy));
  statement.bind(6, run_outcome_name(run.outcome));
  statement.bind(7, peak_device);
  statement.bind(8, peak_host);
  statement.bind(9, run.load_s);
  statement.bind(10, run.step_s);
  statement.bind(11, run.total_s);
  statement.bind(12, static_cast<std::int64_t>(run.steps));
  statement.bind(13, std::string_view(details.dump()));
  statement.step("recording a run");
  return sqlite3_last_insert_rowid(impl_->db.get());
}

std::vector<RunRecord> HistoryStore::runs(const RunFilter& filter,
                                          std::optional<std::size_t> limit) const {
  std::lock_guard lock(impl_->mutex);
  Statement statement(
      impl_->db.get(), impl_->path,
      fmt::format("SELECT {} FROM runs{} ORDER BY timestamp_utc DESC, id DESC LIMIT ?6",
                  kRunColumns, kFilterClause));
  bind_filter(statement, filter);
  constexpr auto kMaxLimit = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
  // SQLite reads a negative LIMIT as no limit.
  statement.bind(6,
                 limit ? static_cast<std::int64_t>(std::min(*limit, kMaxLimit)) : std::int64_t{-1});
  std::vector<RunRecord> runs;
  while (statement.step("reading runs")) {
    runs.push_back(read_run(statement, impl_->path));
  }
  return runs;
}

std::vector<StrategyStats> HistoryStore::stats(const RunFilter& filter) const {
  std::lock_guard lock(impl_->mutex);
  Statement statement(impl_->db.get(), impl_->path,
                      fmt::format("SELECT strategy, outcome, step_s FROM runs{}", kFilterClause));
  bind_filter(statement, filter);

  std::map<std::string, StrategyStats> by_strategy;
  std::map<std::string, std::vector<double>> step_times;
  while (statement.step("reading strategy statistics")) {
    const std::string strategy = statement.text(0);
    StrategyStats& stats = by_strategy[strategy];
    stats.strategy = strategy;
    ++stats.runs;
    const std::optional<RunOutcome> outcome = parse_run_outcome(statement.text(1));
    if (outcome == RunOutcome::success) {
      ++stats.successes;
      step_times[strategy].push_back(statement.real(2));
    } else if (outcome == RunOutcome::out_of_memory) {
      ++stats.out_of_memory;
    } else {
      ++stats.errors;
    }
  }

  std::vector<StrategyStats> result;
  for (auto& [strategy, stats] : by_strategy) {
    stats.success_rate = static_cast<double>(stats.successes) / static_cast<double>(stats.runs);
    stats.median_step_s = median(step_times[strategy]);
    result.push_back(std::move(stats));
  }
  return result;
}

bool HistoryStore::failed_with_oom(const WorkloadKey& key, double max_age_days,
                                   Clock::time_point now) const {
  std::lock_guard lock(impl_->mutex);
  const std::string cutoff = impl_->age_cutoff(max_age_days, now);
  Statement statement(
      impl_->db.get(), impl_->path,
      fmt::format("SELECT EXISTS (SELECT 1 FROM runs{} AND timestamp_utc >= ?6)", kFilterClause));
  bind_filter(statement, workload_filter(key, RunOutcome::out_of_memory));
  statement.bind(6, std::string_view(cutoff));
  return statement.step("looking up out-of-memory runs") && statement.int64(0) != 0;
}

std::optional<double> HistoryStore::median_step_s(const WorkloadKey& key) const {
  std::lock_guard lock(impl_->mutex);
  return median(impl_->successful_step_times(key));
}

std::size_t HistoryStore::prune(double max_age_days, Clock::time_point now) {
  std::lock_guard lock(impl_->mutex);
  const std::string cutoff = impl_->age_cutoff(max_age_days, now);
  Statement statement(impl_->db.get(), impl_->path, "DELETE FROM runs WHERE timestamp_utc < ?1");
  statement.bind(1, std::string_view(cutoff));
  statement.step("deleting old runs");
  return static_cast<std::size_t>(sqlite3_changes(impl_->db.get()));
}

std::string size_bucket(int width, int height) {
  if (width <= 0 || height <= 0) {
    throw InvalidInputError(
        fmt::format("invalid image size {}x{}: width and height must be positive", width, height));
  }
  constexpr double kMegapixel = 1024.0 * 1024.0;
  const double megapixels = static_cast<double>(width) * static_cast<double>(height) / kMegapixel;
  constexpr std::array<std::pair<double, std::string_view>, 5> kBuckets = {{
      {0.25, "0.25MP"},
      {0.5, "0.5MP"},
      {1.0, "1MP"},
      {2.0, "2MP"},
      {4.0, "4MP"},
  }};
  for (const auto& [upper_bound, name] : kBuckets) {
    if (megapixels <= upper_bound) {
      return std::string(name);
    }
  }
  return "4MP+";
}

std::string hardware_fingerprint(std::string_view cpu_model, int cores,
                                 std::uint64_t host_memory_bytes,
                                 const std::vector<std::string>& gpu_names) {
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  std::vector<std::string> gpus;
  for (const std::string& name : gpu_names) {
    gpus.push_back(collapse_whitespace(name));
  }
  std::sort(gpus.begin(), gpus.end());
  std::string gpu_list;
  for (const std::string& name : gpus) {
    gpu_list += gpu_list.empty() ? name : ", " + name;
  }
  const std::string cpu = collapse_whitespace(cpu_model);
  return fmt::format("{} | {} cores | {} GiB | {}", cpu.empty() ? "unknown CPU" : cpu, cores,
                     std::llround(static_cast<double>(host_memory_bytes) / kGiB),
                     gpu_list.empty() ? "no GPU" : gpu_list);
}

nlohmann::json to_json(const RunRecord& run) {
  nlohmann::json details = nlohmann::json::parse(run.details_json, nullptr, false);
  if (details.is_discarded()) {
    details = run.details_json;
  }
  return {
      {"id", run.id},
      {"timestamp_utc", run.timestamp_utc},
      {"hardware_fingerprint", run.hardware_fingerprint},
      {"model", run.model},
      {"size_bucket", run.size_bucket},
      {"strategy", run.strategy},
      {"outcome", run_outcome_name(run.outcome)},
      {"peak_device_bytes", run.peak_device_bytes},
      {"peak_host_bytes", run.peak_host_bytes},
      {"load_s", run.load_s},
      {"step_s", run.step_s},
      {"total_s", run.total_s},
      {"steps", run.steps},
      {"details", std::move(details)},
  };
}

nlohmann::json to_json(const StrategyStats& stats) {
  return {
      {"strategy", stats.strategy},
      {"runs", stats.runs},
      {"successes", stats.successes},
      {"out_of_memory", stats.out_of_memory},
      {"errors", stats.errors},
      {"success_rate", stats.success_rate},
      {"median_step_s",
       stats.median_step_s ? nlohmann::json(*stats.median_step_s) : nlohmann::json(nullptr)},
  };
}

}  // namespace ethereal::memory
