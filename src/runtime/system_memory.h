// Readings of host memory from /proc and cgroup v2 files. Each call reads the files again;
// nothing is cached, so the figures are current.
#pragma once

#include <cstdint>
#include <optional>

namespace ethereal {

struct HostMemory {
  std::uint64_t total_bytes = 0;      // MemTotal
  std::uint64_t available_bytes = 0;  // MemAvailable
};

// The memory controller of the process's cgroup: v2 (memory.max, memory.current) or, on hosts
// still on the v1 hierarchy, v1 (memory.limit_in_bytes, memory.usage_in_bytes).
struct CgroupMemory {
  int version = 2;
  std::optional<std::uint64_t> limit_bytes;  // absent when no limit is set
  std::uint64_t usage_bytes = 0;             // memory.current
};

struct ProcessMemory {
  std::uint64_t resident_bytes = 0;       // VmRSS
  std::uint64_t peak_resident_bytes = 0;  // VmHWM
};

HostMemory read_host_memory();
// Absent when no cgroup memory controller is visible to the process.
std::optional<CgroupMemory> read_cgroup_memory();
ProcessMemory read_process_memory();

// The bytes this process can still obtain: MemAvailable, further bounded by the cgroup
// limit minus its usage when a limit is set.
std::uint64_t host_available_bytes();

}  // namespace ethereal
