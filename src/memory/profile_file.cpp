// save_profile and load_profile: load profiles as JSON files.
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "memory/profiler.h"
#include "runtime/error.h"

namespace ethereal::memory {

namespace {

constexpr std::string_view kProfileFormat = "ethereal-load-profile";
constexpr int kProfileVersion = 1;

// A short description of a JSON value for messages: its type and, for scalars, its text.
std::string describe(const nlohmann::json& value) {
  if (value.is_structured()) {
    return std::string(value.type_name());
  }
  std::string text = value.dump();
  if (text.size() > 40) {
    text = text.substr(0, 37) + "...";
  }
  return fmt::format("{} {}", value.type_name(), text);
}

// Typed access to the fields of a profile document. Every error names the file and the field
// path.
class ProfileReader {
 public:
  explicit ProfileReader(std::string source) : source_(std::move(source)) {}

  LoadProfile read(const nlohmann::json& document) const;

 private:
  MemorySnapshot read_snapshot(const nlohmann::json& object, const std::string& path) const;
  StageMark read_mark(const nlohmann::json& object, const std::string& path) const;

  const nlohmann::json& field(const nlohmann::json& object, std::string_view key,
                              const std::string& path) const;
  std::uint64_t unsigned_value(const nlohmann::json& value, const std::string& path) const;
  std::uint64_t unsigned_field(const nlohmann::json& object, std::string_view key,
                               const std::string& path) const;
  std::optional<std::uint64_t> optional_unsigned_field(const nlohmann::json& object,
                                                       std::string_view key,
                                                       const std::string& path) const;
  double number_field(const nlohmann::json& object, std::string_view key,
                      const std::string& path) const;
  std::string string_field(const nlohmann::json& object, std::string_view key,
                           const std::string& path) const;
  const nlohmann::json& array_field(const nlohmann::json& object, std::string_view key,
                                    const std::string& path) const;

  InvalidInputError error(const std::string& path, const std::string& problem) const {
    return InvalidInputError(fmt::format("load profile {}: field {}: {}", source_, path, problem));
  }

  std::string source_;
};

std::string join_path(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : fmt::format("{}.{}", path, key);
}

const nlohmann::json& ProfileReader::field(const nlohmann::json& object, std::string_view key,
                                           const std::string& path) const {
  const std::string key_path = join_path(path, key);
  if (!object.is_object()) {
    throw error(path.empty() ? "(top level)" : path,
                fmt::format("expected an object, got {}", describe(object)));
  }
  const auto found = object.find(key);
  if (found == object.end()) {
    throw error(key_path, "missing");
  }
  return *found;
}

std::uint64_t ProfileReader::unsigned_value(const nlohmann::json& value,
                                            const std::string& path) const {
  if (!value.is_number_unsigned()) {
    throw error(path, fmt::format("expected a non-negative whole number of bytes, got {}",
                                  describe(value)));
  }
  return value.get<std::uint64_t>();
}

std::uint64_t ProfileReader::unsigned_field(const nlohmann::json& object, std::string_view key,
                                            const std::string& path) const {
  return unsigned_value(field(object, key, path), join_path(path, key));
}

std::optional<std::uint64_t> ProfileReader::optional_unsigned_field(const nlohmann::json& object,
                                                                    std::string_view key,
                                                                    const std::string& path) const {
  const nlohmann::json& value = field(object, key, path);
  if (value.is_null()) {
    return std::nullopt;
  }
  return unsigned_value(value, join_path(path, key));
}

double ProfileReader::number_field(const nlohmann::json& object, std::string_view key,
                                   const std::string& path) const {
  const nlohmann::json& value = field(object, key, path);
  if (!value.is_number()) {
    throw error(join_path(path, key), fmt::format("expected a number, got {}", describe(value)));
  }
  return value.get<double>();
}

std::string ProfileReader::string_field(const nlohmann::json& object, std::string_view key,
                                        const std::string& path) const {
  const nlohmann::json& value = field(object, key, path);
  if (!value.is_string()) {
    throw error(join_path(path, key), fmt::format("expected a string, got {}", describe(value)));
  }
  return value.get<std::string>();
}

const nlohmann::json& ProfileReader::array_field(const nlohmann::json& object, std::string_view key,
                                                 const std::string& path) const {
  const nlohmann::json& value = field(object, key, path);
  if (!value.is_array()) {
    throw error(join_path(path, key), fmt::format("expected an array, got {}", describe(value)));
  }
  return value;
}

MemorySnapshot ProfileReader::read_snapshot(const nlohmann::json& object,
                                            const std::string& path) const {
  MemorySnapshot s;
  s.timestamp = number_field(object, "timestamp", path);
  s.device = string_field(object, "device", path);
  s.device_name = string_field(object, "device_name", path);
  s.device_allocated_bytes = unsigned_field(object, "device_allocated_bytes", path);
  s.device_reserved_bytes = unsigned_field(object, "device_reserved_bytes", path);
  s.device_total_bytes = unsigned_field(object, "device_total_bytes", path);
  s.device_free_bytes = unsigned_field(object, "device_free_bytes", path);
  s.system_total_bytes = unsigned_field(object, "system_total_bytes", path);
  s.system_used_bytes = unsigned_field(object, "system_used_bytes", path);
  s.system_available_bytes = unsigned_field(object, "system_available_bytes", path);
  s.host_available_bytes = unsigned_field(object, "host_available_bytes", path);
  s.cgroup_limit_bytes = optional_unsigned_field(object, "cgroup_limit_bytes", path);
  s.cgroup_usage_bytes = optional_unsigned_field(object, "cgroup_usage_bytes", path);
  s.process_rss_bytes = unsigned_field(object, "process_rss_bytes", path);
  s.process_peak_rss_bytes = unsigned_field(object, "process_peak_rss_bytes", path);
  s.pinned_bytes = unsigned_field(object, "pinned_bytes", path);
  return s;
}

StageMark ProfileReader::read_mark(const nlohmann::json& object, const std::string& path) const {
  StageMark mark;
  mark.name = string_field(object, "name", path);
  mark.timestamp = number_field(object, "timestamp", path);
  return mark;
}

LoadProfile ProfileReader::read(const nlohmann::json& document) const {
  const std::string format = string_field(document, "format", "");
  if (format != kProfileFormat) {
    throw error("format", fmt::format("expected \"{}\", got \"{}\"; this is not a load profile",
                                      kProfileFormat, format));
  }
  const std::uint64_t version = unsigned_field(document, "version", "");
  if (version != kProfileVersion) {
    throw error("version", fmt::format("version {} is not supported; this build reads version {}",
                                       version, kProfileVersion));
  }

  LoadProfile profile;
  profile.name = string_field(document, "name", "");
  profile.device = string_field(document, "device", "");
  profile.started_at = number_field(document, "started_at", "");
  profile.load_s = number_field(document, "load_s", "");
  const nlohmann::json& peaks = field(document, "peak_bytes_per_tier", "");
  if (!peaks.is_object()) {
    throw error("peak_bytes_per_tier",
                fmt::format("expected an object of byte counts, got {}", describe(peaks)));
  }
  for (const auto& [tier, bytes] : peaks.items()) {
    profile.peak_bytes_per_tier[tier] =
        unsigned_value(bytes, join_path("peak_bytes_per_tier", tier));
  }
  profile.device_peak_allocated_bytes = unsigned_field(document, "device_peak_allocated_bytes", "");
  profile.device_peak_reserved_bytes = unsigned_field(document, "device_peak_reserved_bytes", "");
  profile.device_allocated_after_bytes =
      unsigned_field(document, "device_allocated_after_bytes", "");
  profile.process_rss_before_bytes = unsigned_field(document, "process_rss_before_bytes", "");
  profile.process_rss_after_bytes = unsigned_field(document, "process_rss_after_bytes", "");

  const nlohmann::json& samples = array_field(document, "samples", "");
  for (std::size_t i = 0; i < samples.size(); ++i) {
    profile.samples.push_back(read_snapshot(samples[i], fmt::format("samples[{}]", i)));
  }
  const nlohmann::json& marks = array_field(document, "marks", "");
  for (std::size_t i = 0; i < marks.size(); ++i) {
    profile.marks.push_back(read_mark(marks[i], fmt::format("marks[{}]", i)));
  }
  return profile;
}

[[noreturn]] void throw_write_error(const std::filesystem::path& path, const std::string& step,
                                    int error_number) {
  throw IoError(
      fmt::format("writing load profile {} failed: {}: {}; check that the folder "
                  "exists, is writable and has free space",
                  path.string(), step, std::strerror(error_number)));
}

}  // namespace

void save_profile(const LoadProfile& profile, const std::filesystem::path& path) {
  static std::atomic<unsigned> counter{0};
  const std::filesystem::path temporary =
      path.string() + fmt::format(".tmp.{}.{}", ::getpid(), counter++);
  try {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) {
      throw_write_error(path, "cannot create " + temporary.string(), errno);
    }
    out << profile.to_json().dump(2) << '\n';
    out.close();
    if (!out) {
      throw_write_error(path, "cannot write " + temporary.string(), errno);
    }
    std::error_code rename_error;
    std::filesystem::rename(temporary, path, rename_error);
    if (rename_error) {
      throw_write_error(path, "cannot rename " + temporary.string(), rename_error.value());
    }
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(temporary, ignored);
    throw;
  }
}

LoadProfile load_profile(const std::filesystem::path& path) {
  std::error_code status_error;
  if (!std::filesystem::is_regular_file(path, status_error)) {
    throw InvalidInputError(
        fmt::format("load profile {} is not a readable file; give the path of a file written by "
                    "save_profile",
                    path.string()));
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in) {
    throw IoError(
        fmt::format("reading load profile {} failed: {}", path.string(), std::strerror(errno)));
  }
  nlohmann::json document;
  try {
    document = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::parse_error& e) {
    throw InvalidInputError(fmt::format("load profile {}: invalid JSON at byte {}: {}",
                                        path.string(), e.byte, e.what()));
  }
  return ProfileReader(path.string()).read(document);
}

}  // namespace ethereal::memory
