#include "memory/events.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "runtime/error.h"

namespace ethereal::memory {

namespace {

constexpr std::array<std::pair<EventType, std::string_view>, 11> kEventTypeNames = {{
    {EventType::plan, "plan"},
    {EventType::load, "load"},
    {EventType::onload, "onload"},
    {EventType::offload, "offload"},
    {EventType::fallback, "fallback"},
    {EventType::out_of_memory, "out_of_memory"},
    {EventType::retry, "retry"},
    {EventType::stage_peak, "stage_peak"},
    {EventType::threshold, "threshold"},
    {EventType::resolution_reduction, "resolution_reduction"},
    {EventType::edit, "edit"},
}};

// Writes all of `text`, retrying after signals and short writes. Returns 0 or an errno value.
int write_fully(int fd, std::string_view text) {
  while (!text.empty()) {
    const ssize_t written = ::write(fd, text.data(), text.size());
    if (written < 0) {
      if (errno == EINTR) {
        continue;
      }
      return errno;
    }
    text.remove_prefix(static_cast<std::size_t>(written));
  }
  return 0;
}

}  // namespace

std::string_view event_type_name(EventType type) {
  for (const auto& [value, name] : kEventTypeNames) {
    if (value == type) {
      return name;
    }
  }
  throw std::invalid_argument(
      fmt::format("event_type_name: unknown EventType {}", static_cast<int>(type)));
}

std::optional<EventType> parse_event_type(std::string_view name) {
  for (const auto& [value, known] : kEventTypeNames) {
    if (known == name) {
      return value;
    }
  }
  return std::nullopt;
}

std::string to_jsonl_line(const Event& event) {
  // Built by hand so that time_s and type lead the line; nlohmann::json sorts object keys.
  std::string line = fmt::format(R"({{"time_s":{},"type":"{}")",
                                 nlohmann::json(event.time_s).dump(), event_type_name(event.type));
  for (const auto& [key, value] : event.fields.items()) {
    line += ',';
    line += nlohmann::json(key).dump();
    line += ':';
    line += value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  line += "}\n";
  return line;
}

EventLog::EventLog(Clock::time_point origin) : origin_(origin) {}

EventLog::~EventLog() {
  close_jsonl();
}

void EventLog::open_jsonl(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
  if (fd < 0) {
    throw InvalidInputError(fmt::format(
        "cannot open event log '{}' for appending: {}; check that the directory exists and is "
        "writable, or choose another log directory",
        path.string(), std::strerror(errno)));
  }
  std::lock_guard lock(mutex_);
  close_locked();
  fd_ = fd;
  path_ = path;
  sink_error_.clear();
  for (const Event& event : events_) {
    write_line_locked(event);
  }
}

void EventLog::close_jsonl() {
  std::lock_guard lock(mutex_);
  close_locked();
}

void EventLog::close_locked() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  path_.clear();
}

void EventLog::record(EventType type, nlohmann::json fields) {
  if (fields.is_null()) {
    fields = nlohmann::json::object();
  }
  if (!fields.is_object()) {
    throw std::invalid_argument(
        fmt::format("EventLog::record({}): fields must be a JSON object", event_type_name(type)));
  }
  if (fields.contains("time_s") || fields.contains("type")) {
    throw std::invalid_argument(
        fmt::format("EventLog::record({}): the field names time_s and type are reserved",
                    event_type_name(type)));
  }
  std::lock_guard lock(mutex_);
  // The time is taken under the lock, so events and file lines are in time order.
  const std::chrono::duration<double> elapsed = Clock::now() - origin_;
  Event& event = events_.emplace_back(Event{elapsed.count(), type, std::move(fields)});
  write_line_locked(event);
}

void EventLog::write_line_locked(const Event& event) {
  if (fd_ < 0) {
    return;
  }
  const int error = write_fully(fd_, to_jsonl_line(event));
  if (error != 0) {
    sink_error_ =
        fmt::format("writing event log '{}' failed: {}", path_.string(), std::strerror(error));
    spdlog::error("{}; later events are kept in memory only", sink_error_);
    close_locked();
  }
}

std::vector<Event> EventLog::events() const {
  std::lock_guard lock(mutex_);
  return events_;
}

std::filesystem::path EventLog::jsonl_path() const {
  std::lock_guard lock(mutex_);
  return path_;
}

std::string EventLog::sink_error() const {
  std::lock_guard lock(mutex_);
  return sink_error_;
}

}  // namespace ethereal::memory
