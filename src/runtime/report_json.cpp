#include "runtime/report_json.h"

namespace ethereal {

namespace {

nlohmann::json stat_json(const StatValue& value) {
  return {{"current", value.current}, {"peak", value.peak}};
}

}  // namespace

nlohmann::json to_json(const AllocatorStats& stats) {
  return {{"allocated_bytes", stat_json(stats.allocated_bytes)},
          {"reserved_bytes", stat_json(stats.reserved_bytes)},
          {"active_bytes", stat_json(stats.active_bytes)},
          {"requested_bytes", stat_json(stats.requested_bytes)},
          {"allocation_count", stats.allocation_count},
          {"cache_hits", stats.cache_hits},
          {"cache_flushes", stats.cache_flushes},
          {"oom_count", stats.oom_count}};
}

nlohmann::json to_json(const CpuInfo& cpu) {
  const CpuFeatures& f = cpu.features;
  return {{"model_name", cpu.model_name},
          {"logical_cores", cpu.logical_cores},
          {"usable_cores", cpu.usable_cores},
          {"features",
           {{"avx2", f.avx2},
            {"fma", f.fma},
            {"f16c", f.f16c},
            {"avx512f", f.avx512f},
            {"avx512bw", f.avx512bw},
            {"avx512vl", f.avx512vl},
            {"avx512_vnni", f.avx512_vnni},
            {"avx512_bf16", f.avx512_bf16},
            {"avx512_fp16", f.avx512_fp16},
            {"amx_tile", f.amx_tile},
            {"amx_bf16", f.amx_bf16},
            {"amx_int8", f.amx_int8}}}};
}

nlohmann::json to_json(const GpuInfo& gpu) {
  return {{"index", gpu.index},
          {"name", gpu.name},
          {"total_bytes", gpu.total_bytes},
          {"free_bytes", gpu.free_bytes},
          {"compute_capability", std::to_string(gpu.compute_capability_major) + "." +
                                     std::to_string(gpu.compute_capability_minor)},
          {"native_fp8", gpu.native_fp8()}};
}

nlohmann::json to_json(const HardwareInfo& hardware) {
  nlohmann::json cgroup = nullptr;
  if (hardware.cgroup) {
    cgroup = {
        {"version", hardware.cgroup->version},
        {"limit_bytes", hardware.cgroup->limit_bytes ? nlohmann::json(*hardware.cgroup->limit_bytes)
                                                     : nlohmann::json(nullptr)},
        {"usage_bytes", hardware.cgroup->usage_bytes}};
  }
  nlohmann::json gpus = nlohmann::json::array();
  for (const GpuInfo& gpu : hardware.gpus) {
    gpus.push_back(to_json(gpu));
  }
  return {{"cpu", to_json(hardware.cpu)},
          {"host_memory",
           {{"total_bytes", hardware.host.total_bytes},
            {"available_bytes", hardware.host.available_bytes}}},
          {"cgroup_memory", cgroup},
          {"process_memory",
           {{"resident_bytes", hardware.process.resident_bytes},
            {"peak_resident_bytes", hardware.process.peak_resident_bytes}}},
          {"gpus", gpus},
          {"gpu_status", hardware.gpu_status}};
}

}  // namespace ethereal
