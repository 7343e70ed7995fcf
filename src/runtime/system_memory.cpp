#include "runtime/system_memory.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>

namespace ethereal {

namespace {

// Reads "Key:   123 kB" lines of a /proc status-style file; returns bytes.
std::optional<std::uint64_t> read_kib_field(const char* path, const std::string& key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, key.size(), key) == 0 && line.size() > key.size() &&
        line[key.size()] == ':') {
      std::istringstream fields(line.substr(key.size() + 1));
      std::uint64_t kib = 0;
      if (fields >> kib) {
        return kib * 1024;
      }
    }
  }
  return std::nullopt;
}

std::optional<std::string> read_first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!std::getline(in, line)) {
    return std::nullopt;
  }
  return line;
}

// The cgroup path of this process for a hierarchy: "0::/a/b" (v2) or "4:memory:/a/b" (v1).
std::optional<std::string> cgroup_path(const std::string& hierarchy_prefix) {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  while (std::getline(in, line)) {
    if (line.find(hierarchy_prefix) != std::string::npos) {
      return line.substr(line.find(hierarchy_prefix) + hierarchy_prefix.size());
    }
  }
  return std::nullopt;
}

// Inside a container the cgroup file system is usually mounted at the container's own
// cgroup, so the path from /proc/self/cgroup may not exist there; the mount root is tried
// next.
std::optional<CgroupMemory> read_cgroup_files(const std::string& root, const std::string& path,
                                              const char* limit_file, const char* usage_file,
                                              int version) {
  for (const std::string& directory : {root + path, root}) {
    auto limit = read_first_line(directory + "/" + limit_file);
    auto usage = read_first_line(directory + "/" + usage_file);
    if (!limit || !usage) {
      continue;
    }
    CgroupMemory memory;
    memory.version = version;
    memory.usage_bytes = std::stoull(*usage);
    if (*limit != "max") {
      const std::uint64_t value = std::stoull(*limit);
      // cgroup v1 reports "no limit" as a number near 2^63.
      if (value < (std::uint64_t{1} << 62)) {
        memory.limit_bytes = value;
      }
    }
    return memory;
  }
  return std::nullopt;
}

}  // namespace

HostMemory read_host_memory() {
  HostMemory memory;
  memory.total_bytes = read_kib_field("/proc/meminfo", "MemTotal").value_or(0);
  memory.available_bytes = read_kib_field("/proc/meminfo", "MemAvailable").value_or(0);
  return memory;
}

std::optional<CgroupMemory> read_cgroup_memory() {
  if (auto path = cgroup_path(":memory:")) {
    if (auto memory = read_cgroup_files("/sys/fs/cgroup/memory", *path, "memory.limit_in_bytes",
                                        "memory.usage_in_bytes", 1)) {
      return memory;
    }
  }
  if (auto path = cgroup_path("0::")) {
    return read_cgroup_files("/sys/fs/cgroup", *path, "memory.max", "memory.current", 2);
  }
  return std::nullopt;
}

ProcessMemory read_process_memory() {
  ProcessMemory memory;
  memory.resident_bytes = read_kib_field("/proc/self/status", "VmRSS").value_or(0);
  memory.peak_resident_bytes = read_kib_field("/proc/self/status", "VmHWM").value_or(0);
  return memory;
}

std::uint64_t host_available_bytes() {
  std::uint64_t available = read_host_memory().available_bytes;
  if (auto cgroup = read_cgroup_memory(); cgroup && cgroup->limit_bytes) {
    const std::uint64_t limit = *cgroup->limit_bytes;
    const std::uint64_t headroom = limit > cgroup->usage_bytes ? limit - cgroup->usage_bytes : 0;
    available = std::min(available, headroom);
  }
  return available;
}

}  // namespace ethereal
