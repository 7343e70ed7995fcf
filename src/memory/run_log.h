// Human-readable records of each load and edit.
//
// Every load and every edit appends one "Memory Management Log Entry" in Markdown to
// <log dir>/memory_log.md: strategy, device, available memory, duration, peak memory, success,
// optimizations applied, fallbacks taken, the error if any, and stage times. RunLogWriter also
// owns the run's event stream (<run id>.events.jsonl) and memory timeline (<run id>.timeline.svg)
// in the same directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "memory/events.h"
#include "memory/timeline_svg.h"

namespace ethereal::memory {

enum class RunKind { load, edit };

// "load" or "edit".
std::string_view run_kind_name(RunKind kind);

struct RunLogEntry {
  RunKind kind = RunKind::load;
  std::string timestamp_utc;  // ISO 8601, as format_utc_timestamp writes it
  std::string strategy;       // fp16_full, fp8_optimized, ...
  std::string device;         // cpu, cuda:0, ...
  std::uint64_t available_device_bytes = 0;
  std::uint64_t available_host_bytes = 0;
  double duration_s = 0.0;  // the load time or the edit time, by kind
  std::uint64_t peak_device_bytes = 0;
  std::uint64_t peak_host_bytes = 0;
  bool success = false;
  std::vector<std::string> optimizations;  // "fp8 weights", "tiled VAE decode", ...
  std::vector<std::string> fallbacks;      // "fp16_full -> fp8_optimized: out of memory", ...
  std::string error;                       // empty on success
  std::map<std::string, double> stage_s;   // seconds per stage, by stage name
};

// "812.4 MiB" below 1 GiB, "23.54 GiB" from 1 GiB up.
std::string format_memory_size(std::uint64_t bytes);

// Renders one entry: the heading "## Memory Management Log Entry", a "### Load: <strategy>" or
// "### Edit: <strategy>" subheading, a bullet per scalar field, then lists of optimizations,
// fallbacks and stage times ("- none" when a list is empty). Text fields are written on one
// line: line breaks become spaces, so an error message cannot end the list or start a heading.
std::string render_markdown(const RunLogEntry& entry);

// Appends render_markdown(entry) to <dir>/memory_log.md, creating the directory and the file
// when missing, and returns the file's path. The entry goes out in one write() call on an
// O_APPEND descriptor, so entries from concurrent processes do not interleave on local file
// systems. Throws InvalidInputError naming the directory or file when it cannot be created or
// opened, IoError when writing fails.
std::filesystem::path append_run_log(const std::filesystem::path& dir, const RunLogEntry& entry);

// A run id made of the UTC time, process id and a per-process counter,
// "20260123T100000Z-4242-1". Ids are unique on one machine, and ids of different seconds sort
// in time order.
std::string new_run_id();

// Timeline marks for events worth seeing on the memory timeline: every event except plan,
// each labelled with its type and its "stage", "strategy" or "reason" field when present.
std::vector<TimelineMark> timeline_marks(const std::vector<Event>& events);

// The log files of one run in a log directory:
//   <dir>/<run_id>.events.jsonl    the event stream, written while the run goes on
//   <dir>/<run_id>.timeline.svg    the memory timeline, written by write_timeline()
//   <dir>/memory_log.md            shared by all runs, one entry appended per load or edit
class RunLogWriter {
 public:
  // Creates `dir` when missing and opens the event stream. `run_id` must be non-empty and use
  // only letters, digits, '.', '_' and '-', without a leading '.'; otherwise InvalidInputError.
  RunLogWriter(std::filesystem::path dir, std::string run_id);

  EventLog& events() { return events_; }
  const std::string& run_id() const { return run_id_; }
  std::filesystem::path events_path() const;
  std::filesystem::path timeline_path() const;
  std::filesystem::path markdown_path() const;

  // Writes the timeline picture, replacing an earlier one of this run.
  void write_timeline(const std::vector<TimelineSample>& samples,
                      const std::vector<TimelineMark>& marks,
                      std::optional<std::uint64_t> capacity_bytes, const std::string& title);
  // Appends the entry to memory_log.md.
  void append_entry(const RunLogEntry& entry);

 private:
  std::filesystem::path dir_;
  std::string run_id_;
  EventLog events_;
};

}  // namespace ethereal::memory
