// JSON forms of runtime reports, shared by the command line and the backend API.
// Field names are snake_case; sizes are bytes (`*_bytes`).
#pragma once

#include <nlohmann/json.hpp>

#include "runtime/allocator.h"
#include "runtime/hardware.h"

namespace ethereal {

nlohmann::json to_json(const AllocatorStats& stats);
nlohmann::json to_json(const CpuInfo& cpu);
nlohmann::json to_json(const GpuInfo& gpu);
// The hardware assessment with a memory snapshot: cpu, host_memory, cgroup_memory (null when
// absent), process_memory, gpus (empty list when absent) and gpu_status.
nlohmann::json to_json(const HardwareInfo& hardware);

}  // namespace ethereal
