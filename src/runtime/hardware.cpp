#include "runtime/hardware.h"

#include <cpuid.h>
#include <dlfcn.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <fstream>

#include "runtime/parallel.h"

namespace ethereal {

namespace {

struct CpuidRegisters {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
};

CpuidRegisters cpuid(unsigned leaf, unsigned subleaf) {
  CpuidRegisters r;
  __cpuid_count(leaf, subleaf, r.eax, r.ebx, r.ecx, r.edx);
  return r;
}

bool bit(unsigned value, int index) {
  return ((value >> index) & 1u) != 0;
}

std::uint64_t read_xcr0() {
  unsigned eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<std::uint64_t>(edx) << 32) | eax;
}

CpuFeatures read_features() {
  CpuFeatures f;
  const unsigned max_leaf = __get_cpuid_max(0, nullptr);
  const CpuidRegisters leaf1 = cpuid(1, 0);
  const bool osxsave = bit(leaf1.ecx, 27);
  const std::uint64_t xcr0 = osxsave ? read_xcr0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;                 // XMM and YMM state
  const bool os_avx512 = os_avx && (xcr0 & 0xE0) == 0xE0;  // opmask, ZMM_Hi256, Hi16_ZMM
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;         // XTILECFG and XTILEDATA

  f.fma = os_avx && bit(leaf1.ecx, 12);
  f.f16c = os_avx && bit(leaf1.ecx, 29);
  if (max_leaf < 7) {
    return f;
  }
  const CpuidRegisters leaf7 = cpuid(7, 0);
  const CpuidRegisters leaf7_1 = cpuid(7, 1);
  f.avx2 = os_avx && bit(leaf7.ebx, 5);
  f.avx512f = os_avx512 && bit(leaf7.ebx, 16);
  f.avx512bw = os_avx512 && bit(leaf7.ebx, 30);
  f.avx512vl = os_avx512 && bit(leaf7.ebx, 31);
  f.avx512_vnni = os_avx512 && bit(leaf7.ecx, 11);
  f.avx512_fp16 = os_avx512 && bit(leaf7.edx, 23);
  f.avx512_bf16 = os_avx512 && bit(leaf7_1.eax, 5);
  f.amx_bf16 = os_amx && bit(leaf7.edx, 22);
  f.amx_tile = os_amx && bit(leaf7.edx, 24);
  f.amx_int8 = os_amx && bit(leaf7.edx, 25);
  return f;
}

std::string read_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) {
        return line.substr(line.find_first_not_of(' ', colon + 1));
      }
    }
  }
  // Fall back to the cpuid brand string.
  std::array<char, 49> brand{};
  for (unsigned i = 0; i < 3; ++i) {
    CpuidRegisters r = cpuid(0x80000002u + i, 0);
    std::memcpy(brand.data() + 16 * i, &r, 16);
  }
  return std::string(brand.data());
}

// The subset of the NVML C API used here, resolved with dlsym.
using NvmlDevice = void*;
struct NvmlMemory {
  unsigned long long total, free, used;
};
struct Nvml {
  int (*init)() = nullptr;
  int (*shutdown)() = nullptr;
  int (*device_count)(unsigned*) = nullptr;
  int (*device_handle)(unsigned, NvmlDevice*) = nullptr;
  int (*device_name)(NvmlDevice, char*, unsigned) = nullptr;
  int (*device_memory)(NvmlDevice, NvmlMemory*) = nullptr;
  int (*compute_capability)(NvmlDevice, int*, int*) = nullptr;
};

}  // namespace

CpuInfo read_cpu_info() {
  CpuInfo info;
  info.model_name = read_model_name();
  info.logical_cores = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  info.usable_cores = usable_core_count();
  info.features = read_features();
  return info;
}

std::vector<GpuInfo> read_gpu_info(std::string& status) {
  std::vector<GpuInfo> gpus;
  void* library = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    status = "absent: no NVIDIA driver (libnvidia-ml.so.1 not found)";
    return gpus;
  }
  Nvml nvml;
  nvml.init = reinterpret_cast<int (*)()>(dlsym(library, "nvmlInit_v2"));
  nvml.shutdown = reinterpret_cast<int (*)()>(dlsym(library, "nvmlShutdown"));
  nvml.device_count = reinterpret_cast<int (*)(unsigned*)>(dlsym(library, "nvmlDeviceGetCount_v2"));
  nvml.device_handle = reinterpret_cast<int (*)(unsigned, NvmlDevice*)>(
      dlsym(library, "nvmlDeviceGetHandleByIndex_v2"));
  nvml.device_name =
      reinterpret_cast<int (*)(NvmlDevice, char*, unsigned)>(dlsym(library, "nvmlDeviceGetName"));
  nvml.device_memory =
      reinterpret_cast<int (*)(NvmlDevice, NvmlMemory*)>(dlsym(library, "nvmlDeviceGetMemoryInfo"));
  nvml.compute_capability = reinterpret_cast<int (*)(NvmlDevice, int*, int*)>(
      dlsym(library, "nvmlDeviceGetCudaComputeCapability"));
  if (!nvml.init || !nvml.shutdown || !nvml.device_count || !nvml.device_handle ||
      !nvml.device_name || !nvml.device_memory || !nvml.compute_capability) {
    status = "absent: libnvidia-ml.so.1 lacks the expected NVML functions";
    dlclose(library);
    return gpus;
  }
  if (nvml.init() != 0) {
    status = "absent: nvmlInit failed (driver not loaded?)";
    dlclose(library);
    return gpus;
  }
  unsigned count = 0;
  if (nvml.device_count(&count) == 0) {
    for (unsigned i = 0; i < count; ++i) {
      NvmlDevice device = nullptr;
      if (nvml.device_handle(i, &device) != 0) {
        continue;
      }
      GpuInfo gpu;
      gpu.index = static_cast<int>(i);
      std::array<char, 96> name{};
      if (nvml.device_name(device, name.data(), static_cast<unsigned>(name.size())) == 0) {
        gpu.name = name.data();
      }
      NvmlMemory memory{};
      if (nvml.device_memory(device, &memory) == 0) {
        gpu.total_bytes = memory.total;
        gpu.free_bytes = memory.free;
      }
      nvml.compute_capability(device, &gpu.compute_capability_major, &gpu.compute_capability_minor);
      gpus.push_back(gpu);
    }
  }
  nvml.shutdown();
  dlclose(library);
  status = gpus.empty() ? "absent: NVML reports no devices" : "ok";
  return gpus;
}

HardwareInfo assess_hardware() {
  HardwareInfo info;
  info.cpu = read_cpu_info();
  info.host = read_host_memory();
  info.cgroup = read_cgroup_memory();
  info.process = read_process_memory();
  info.gpus = read_gpu_info(info.gpu_status);
  return info;
}

}  // namespace ethereal
