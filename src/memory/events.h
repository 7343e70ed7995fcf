// The event stream of one load or edit: what the memory layer decided and observed, in order.
//
// EventLog keeps every event in memory and, once open_jsonl() is called, also appends each one
// to a JSON Lines file as it is recorded. A line is one object,
//   {"time_s":1.250,"type":"fallback","from":"fp16_full","to":"fp8_optimized"}
// with "time_s" (seconds since the log's origin, a steady clock) and "type" first, then the
// event's fields. Each line reaches the file with one write() call on a descriptor opened with
// O_APPEND, so a process killed at any point leaves only complete lines behind. The exception is
// a full disk, where a write can stop part-way and leave a partial last line. Lines are not
// fsynced, so a power loss can drop the most recent ones.
#pragma once

#include <chrono>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace ethereal::memory {

enum class EventType {
  plan,                  // a strategy was planned (predicted peaks)
  load,                  // a load started or finished
  onload,                // weights moved to the device
  offload,               // weights moved off the device
  fallback,              // a strategy was abandoned for the next one
  out_of_memory,         // an allocator raised OutOfMemoryError
  retry,                 // an edit step is run again with less working memory
  stage_peak,            // the peak of one stage (text encoding, denoising step, VAE decode, ...)
  threshold,             // a warning, critical or fallback-trigger threshold was crossed
  resolution_reduction,  // the request was scaled down to fit
  edit,                  // an edit started or finished
};

// The snake_case name written to files: "out_of_memory", "stage_peak", ...
std::string_view event_type_name(EventType type);
// Inverse of event_type_name; std::nullopt for an unknown name.
std::optional<EventType> parse_event_type(std::string_view name);

struct Event {
  double time_s = 0.0;  // seconds since the log's origin
  EventType type = EventType::plan;
  nlohmann::json fields = nlohmann::json::object();
};

// One JSON Lines object: time_s, type, then the fields.
std::string to_jsonl_line(const Event& event);

// Thread-safe: record() may be called from several threads, and lines appear in the file in
// the order of their time_s.
class EventLog {
 public:
  using Clock = std::chrono::steady_clock;

  // time_s of each event counts from `origin`; share one origin with the memory timeline so
  // that events and samples line up.
  explicit EventLog(Clock::time_point origin = Clock::now());
  ~EventLog();
  EventLog(const EventLog&) = delete;
  EventLog& operator=(const EventLog&) = delete;

  // Appends every following event to `path` (created when missing, appended to otherwise),
  // starting with the events recorded so far. Replaces an earlier sink. Throws
  // InvalidInputError when the file cannot be opened, naming it.
  void open_jsonl(const std::filesystem::path& path);
  // Stops writing to the file; the events stay in memory.
  void close_jsonl();

  // Records an event at the current time. `fields` must be a JSON object (null counts as
  // empty) without the keys "time_s" and "type", or std::invalid_argument is thrown.
  // A failed write to the file does not throw, because a full disk must not fail the load or
  // edit being logged. It is logged once, closes the sink, and sink_error() returns it.
  void record(EventType type, nlohmann::json fields = nlohmann::json::object());

  std::vector<Event> events() const;
  Clock::time_point origin() const { return origin_; }
  // The path given to open_jsonl, empty when no sink is open.
  std::filesystem::path jsonl_path() const;
  // Why the sink was closed after a failed write; empty when no write failed.
  std::string sink_error() const;

 private:
  void write_line_locked(const Event& event);
  void close_locked();

  Clock::time_point origin_;
  mutable std::mutex mutex_;
  std::vector<Event> events_;
  int fd_ = -1;
  std::filesystem::path path_;
  std::string sink_error_;
};

}  // namespace ethereal::memory
