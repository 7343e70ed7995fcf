#include "memory/run_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include "memory/timestamp.h"
#include "runtime/error.h"

namespace ethereal::memory {

namespace {

namespace fs = std::filesystem;

constexpr const char* kMarkdownFileName = "memory_log.md";

// Keeps free text on one Markdown line: a line break becomes a space, unless a space precedes it.
std::string one_line(std::string_view text) {
  std::string line;
  line.reserve(text.size());
  for (const char c : text) {
    if (c != '\n' && c != '\r') {
      line += c;
    } else if (!line.empty() && line.back() != ' ') {
      line += ' ';
    }
  }
  return line;
}

void append_list(std::string& markdown, std::string_view heading,
                 const std::vector<std::string>& items) {
  markdown += fmt::format("\n### {}\n", heading);
  if (items.empty()) {
    markdown += "- none\n";
  }
  for (const std::string& item : items) {
    markdown += fmt::format("- {}\n", one_line(item));
  }
}

void create_log_directory(const fs::path& dir) {
  std::error_code error;
  fs::create_directories(dir, error);
  if (error) {
    throw InvalidInputError(
        fmt::format("cannot create log directory '{}': {}; choose a writable log directory",
                    dir.string(), error.message()));
  }
}

bool is_valid_run_id(std::string_view run_id) {
  if (run_id.empty() || run_id.front() == '.') {
    return false;
  }
  for (const char c : run_id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return false;
    }
  }
  return true;
}

std::string mark_label(const Event& event) {
  std::string label(event_type_name(event.type));
  for (const char* key : {"stage", "strategy", "reason"}) {
    const auto found = event.fields.find(key);
    if (found != event.fields.end() && found->is_string()) {
      label += ": " + found->get<std::string>();
      break;
    }
  }
  return label;
}

}  // namespace

std::string_view run_kind_name(RunKind kind) {
  return kind == RunKind::load ? "load" : "edit";
}

std::string format_memory_size(std::uint64_t bytes) {
  constexpr double kMiB = 1024.0 * 1024.0;
  constexpr double kGiB = 1024.0 * kMiB;
  const auto value = static_cast<double>(bytes);
  if (value < kGiB) {
    return fmt::format("{:.1f} MiB", value / kMiB);
  }
  return fmt::format("{:.2f} GiB", value / kGiB);
}

std::string render_markdown(const RunLogEntry& entry) {
  const bool is_load = entry.kind == RunKind::load;
  std::string markdown = "## Memory Management Log Entry\n\n";
  markdown += fmt::format("### {}: {}\n", is_load ? "Load" : "Edit", one_line(entry.strategy));
  markdown += fmt::format("- Time (UTC): {}\n", one_line(entry.timestamp_utc));
  markdown += fmt::format("- Kind: {}\n", run_kind_name(entry.kind));
  markdown += fmt::format("- Strategy: {}\n", one_line(entry.strategy));
  markdown += fmt::format("- Device: {}\n", one_line(entry.device));
  markdown += fmt::format("- Available device memory: {}\n",
                          format_memory_size(entry.available_device_bytes));
  markdown +=
      fmt::format("- Available host memory: {}\n", format_memory_size(entry.available_host_bytes));
  markdown += fmt::format("- {} time: {:.2f} s\n", is_load ? "Load" : "Edit", entry.duration_s);
  markdown +=
      fmt::format("- Peak device memory: {}\n", format_memory_size(entry.peak_device_bytes));
  markdown += fmt::format("- Peak host memory: {}\n", format_memory_size(entry.peak_host_bytes));
  markdown += fmt::format("- Success: {}\n", entry.success ? "true" : "false");
  markdown += fmt::format("- Error: {}\n", entry.error.empty() ? "none" : one_line(entry.error));

  append_list(markdown, "Optimizations applied", entry.optimizations);
  append_list(markdown, "Fallbacks", entry.fallbacks);
  std::vector<std::string> stages;
  for (const auto& [stage, seconds] : entry.stage_s) {
    stages.push_back(fmt::format("{}: {:.3f} s", stage, seconds));
  }
  append_list(markdown, "Stage times", stages);
  return markdown;
}

fs::path append_run_log(const fs::path& dir, const RunLogEntry& entry) {
  create_log_directory(dir);
  const fs::path path = dir / kMarkdownFileName;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
  if (fd < 0) {
    throw InvalidInputError(fmt::format(
        "cannot open memory log '{}' for appending: {}; choose a writable log directory",
        path.string(), std::strerror(errno)));
  }
  // A blank line keeps consecutive entries apart when the file is read as Markdown.
  std::string text = "\n";
  text += render_markdown(entry);
  std::string_view remaining = text;
  int error = 0;
  while (!remaining.empty() && error == 0) {
    const ssize_t written = ::write(fd, remaining.data(), remaining.size());
    if (written >= 0) {
      remaining.remove_prefix(static_cast<std::size_t>(written));
    } else if (errno != EINTR) {
      error = errno;
    }
  }
  if (::close(fd) != 0 && error == 0) {
    error = errno;
  }
  if (error != 0) {
    throw IoError(
        fmt::format("writing memory log '{}' failed: {}", path.string(), std::strerror(error)));
  }
  return path;
}

std::string new_run_id() {
  static std::atomic<unsigned> counter{0};
  std::string timestamp = utc_timestamp_now();  // 2026-01-23T10:00:00Z
  std::erase(timestamp, '-');
  std::erase(timestamp, ':');
  return fmt::format("{}-{}-{}", timestamp, ::getpid(), ++counter);
}

std::vector<TimelineMark> timeline_marks(const std::vector<Event>& events) {
  std::vector<TimelineMark> marks;
  for (const Event& event : events) {
    if (event.type != EventType::plan) {
      marks.push_back({event.time_s, mark_label(event)});
    }
  }
  return marks;
}

RunLogWriter::RunLogWriter(fs::path dir, std::string run_id)
    : dir_(std::move(dir)), run_id_(std::move(run_id)) {
  if (!is_valid_run_id(run_id_)) {
    throw InvalidInputError(fmt::format(
        "invalid run id '{}': use letters, digits, '.', '_' and '-' only, not starting with '.'",
        run_id_));
  }
  create_log_directory(dir_);
  events_.open_jsonl(events_path());
}

fs::path RunLogWriter::events_path() const {
  return dir_ / (run_id_ + ".events.jsonl");
}

fs::path RunLogWriter::timeline_path() const {
  return dir_ / (run_id_ + ".timeline.svg");
}

fs::path RunLogWriter::markdown_path() const {
  return dir_ / kMarkdownFileName;
}

void RunLogWriter::write_timeline(const std::vector<TimelineSample>& samples,
                                  const std::vector<TimelineMark>& marks,
                                  std::optional<std::uint64_t> capacity_bytes,
                                  const std::string& title) {
  write_timeline_svg(timeline_path(), samples, marks, capacity_bytes, title);
}

void RunLogWriter::append_entry(const RunLogEntry& entry) {
  append_run_log(dir_, entry);
}

}  // namespace ethereal::memory
