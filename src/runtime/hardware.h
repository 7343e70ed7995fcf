// Hardware assessment: what this machine offers the engine. Read once per call from cpuid,
// /proc, cgroup files and, when an NVIDIA driver is installed, NVML loaded at run time.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "runtime/system_memory.h"

namespace ethereal {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512_vnni = false;
  bool avx512_bf16 = false;
  bool avx512_fp16 = false;
  bool amx_tile = false;
  bool amx_bf16 = false;
  bool amx_int8 = false;
};

struct CpuInfo {
  std::string model_name;
  int logical_cores = 0;  // online processors
  int usable_cores = 0;   // affinity mask and cgroup quota applied
  CpuFeatures features;   // instruction set extensions the CPU reports and the OS enables
};

struct GpuInfo {
  int index = 0;
  std::string name;
  std::uint64_t total_bytes = 0;
  std::uint64_t free_bytes = 0;
  int compute_capability_major = 0;
  int compute_capability_minor = 0;
  // Native fp8 matrix multiplication needs compute capability 8.9 (Ada) or newer.
  bool native_fp8() const {
    return compute_capability_major > 8 ||
           (compute_capability_major == 8 && compute_capability_minor >= 9);
  }
};

struct HardwareInfo {
  CpuInfo cpu;
  HostMemory host;
  std::optional<CgroupMemory> cgroup;
  ProcessMemory process;
  std::vector<GpuInfo> gpus;  // empty when no NVIDIA driver is present
  std::string gpu_status;     // why the list is empty, or "ok"
};

CpuInfo read_cpu_info();
// Queries NVML through dlopen; returns an empty list and sets `status` when unavailable.
std::vector<GpuInfo> read_gpu_info(std::string& status);
HardwareInfo assess_hardware();

}  // namespace ethereal
