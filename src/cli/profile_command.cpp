// ethereal profile: the hardware assessment and a memory snapshot.
#include <iostream>
#include <string>

#include <fmt/format.h>

#include "cli/command.h"
#include "memory/profiler.h"
#include "runtime/allocator.h"
#include "runtime/hardware.h"
#include "runtime/report_json.h"

namespace ethereal::cli {

namespace {

struct ProfileOptions {
  bool json = false;
};

// "812.4 MiB" below 1 GiB, "23.54 GiB" above.
std::string gib(std::uint64_t bytes) {
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  if (static_cast<double>(bytes) < kGiB) {
    return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  }
  return fmt::format("{:.2f} GiB", static_cast<double>(bytes) / kGiB);
}

std::string yes_no(bool value) {
  return value ? "yes" : "no";
}

void print_text(const HardwareInfo& hw, const AllocatorStats& stats) {
  const CpuFeatures& f = hw.cpu.features;
  std::cout << "CPU\n";
  std::cout << fmt::format("  model               {}\n", hw.cpu.model_name);
  std::cout << fmt::format("  cores               {} usable of {} online\n", hw.cpu.usable_cores,
                           hw.cpu.logical_cores);
  std::cout << fmt::format("  AVX2 / FMA / F16C   {} / {} / {}\n", yes_no(f.avx2), yes_no(f.fma),
                           yes_no(f.f16c));
  std::cout << fmt::format("  AVX-512 F/BW/VL     {} / {} / {}\n", yes_no(f.avx512f),
                           yes_no(f.avx512bw), yes_no(f.avx512vl));
  std::cout << fmt::format("  AVX512_BF16         {}\n", yes_no(f.avx512_bf16));
  std::cout << fmt::format("  AVX512_VNNI         {}\n", yes_no(f.avx512_vnni));
  std::cout << fmt::format("  AVX512_FP16         {}\n", yes_no(f.avx512_fp16));
  std::cout << fmt::format("  AMX tile/bf16/int8  {} / {} / {}\n", yes_no(f.amx_tile),
                           yes_no(f.amx_bf16), yes_no(f.amx_int8));

  std::cout << "Host memory\n";
  std::cout << fmt::format("  total               {}\n", gib(hw.host.total_bytes));
  std::cout << fmt::format("  available           {}\n", gib(hw.host.available_bytes));
  if (hw.cgroup) {
    std::cout << fmt::format("  cgroup v{} limit     {}\n", hw.cgroup->version,
                             hw.cgroup->limit_bytes ? gib(*hw.cgroup->limit_bytes) : "none");
    std::cout << fmt::format("  cgroup usage        {}\n", gib(hw.cgroup->usage_bytes));
  } else {
    std::cout << "  cgroup              no memory controller visible\n";
  }
  std::cout << "Process\n";
  std::cout << fmt::format("  resident            {}\n", gib(hw.process.resident_bytes));
  std::cout << fmt::format("  peak resident       {}\n", gib(hw.process.peak_resident_bytes));

  std::cout << "Device allocator (cpu)\n";
  std::cout << fmt::format("  allocated           {} (peak {})\n",
                           format_mib(static_cast<std::size_t>(stats.allocated_bytes.current)),
                           format_mib(static_cast<std::size_t>(stats.allocated_bytes.peak)));
  std::cout << fmt::format("  reserved            {} (peak {})\n",
                           format_mib(static_cast<std::size_t>(stats.reserved_bytes.current)),
                           format_mib(static_cast<std::size_t>(stats.reserved_bytes.peak)));
  std::cout << fmt::format("  allocations / OOM   {} / {}\n", stats.allocation_count,
                           stats.oom_count);

  std::cout << "GPU\n";
  if (hw.gpus.empty()) {
    std::cout << fmt::format("  {}\n", hw.gpu_status);
  }
  for (const GpuInfo& gpu : hw.gpus) {
    std::cout << fmt::format("  cuda:{}  {}  {} total, {} free, compute capability {}.{}{}\n",
                             gpu.index, gpu.name, gib(gpu.total_bytes), gib(gpu.free_bytes),
                             gpu.compute_capability_major, gpu.compute_capability_minor,
                             gpu.native_fp8() ? ", native fp8" : "");
  }
}

}  // namespace

Command add_profile_command(CLI::App& parent, const GlobalOptions& global) {
  auto options = std::make_shared<ProfileOptions>();
  CLI::App* app =
      parent.add_subcommand("profile", "Print the hardware assessment and a memory snapshot");
  app->add_flag("--json", options->json,
                "Print one JSON document on standard output (sizes in bytes)");
  Command command;
  command.app = app;
  command.run = [options]() {
    const HardwareInfo hardware = assess_hardware();
    Allocator& allocator = current_allocator(Device::cpu());
    const AllocatorStats stats = allocator.stats();
    if (options->json) {
      nlohmann::json document = to_json(hardware);
      document["device_allocator"] = to_json(stats);
      document["device_allocator"]["device"] = "cpu";
      const std::size_t capacity = allocator.capacity();
      document["device_allocator"]["capacity_bytes"] =
          capacity == kUnlimitedCapacity ? nlohmann::json(nullptr) : nlohmann::json(capacity);
      document["memory_snapshot"] = memory::MemoryProfiler().take_snapshot().to_json();
      std::cout << document.dump(2) << "\n";
    } else {
      print_text(hardware, stats);
    }
    return 0;
  };
  return command;
}

}  // namespace ethereal::cli
