#include "memory/profiler.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <stdexcept>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "runtime/allocator.h"
#include "runtime/error.h"
#include "runtime/hardware.h"
#include "runtime/system_memory.h"

namespace ethereal::memory {

namespace {

double seconds_since_epoch() {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return std::chrono::duration<double>(now).count();
}

std::uint64_t non_negative(std::int64_t value) {
  return value > 0 ? static_cast<std::uint64_t>(value) : 0;
}

std::uint64_t saturating_subtract(std::uint64_t a, std::uint64_t b) {
  return a > b ? a - b : 0;
}

// Fills the host, cgroup and process figures.
void read_host_figures(MemorySnapshot& snapshot) {
  const HostMemory host = read_host_memory();
  const std::optional<CgroupMemory> cgroup = read_cgroup_memory();
  const ProcessMemory process = read_process_memory();

  snapshot.system_total_bytes = host.total_bytes;
  snapshot.system_available_bytes = host.available_bytes;
  snapshot.system_used_bytes = saturating_subtract(host.total_bytes, host.available_bytes);
  snapshot.host_available_bytes = host.available_bytes;
  if (cgroup) {
    snapshot.cgroup_usage_bytes = cgroup->usage_bytes;
    snapshot.cgroup_limit_bytes = cgroup->limit_bytes;
    if (cgroup->limit_bytes) {
      const std::uint64_t headroom = saturating_subtract(*cgroup->limit_bytes, cgroup->usage_bytes);
      snapshot.host_available_bytes = std::min(snapshot.host_available_bytes, headroom);
    }
  }
  snapshot.process_rss_bytes = process.resident_bytes;
  snapshot.process_peak_rss_bytes = process.peak_resident_bytes;
}

// The CPU device is host memory, bounded by the cgroup limit and the allocator's capacity.
void read_cpu_device_figures(MemorySnapshot& snapshot, const Allocator& allocator) {
  std::uint64_t total = snapshot.system_total_bytes;
  if (snapshot.cgroup_limit_bytes) {
    total = std::min(total, *snapshot.cgroup_limit_bytes);
  }
  std::uint64_t free = snapshot.host_available_bytes;
  const std::size_t capacity = allocator.capacity();
  if (capacity != kUnlimitedCapacity) {
    total = std::min<std::uint64_t>(total, capacity);
    free = std::min(free, saturating_subtract(capacity, snapshot.device_reserved_bytes));
  }
  snapshot.device_total_bytes = total;
  snapshot.device_free_bytes = free;
}

// NOTE: NVML numbers GPUs in PCI bus order, which is CUDA's order only when
// CUDA_DEVICE_ORDER=PCI_BUS_ID and CUDA_VISIBLE_DEVICES is unset.
void read_gpu_device_figures(MemorySnapshot& snapshot, const Device& device) {
  std::string status;
  const std::vector<GpuInfo> gpus = read_gpu_info(status);
  for (const GpuInfo& gpu : gpus) {
    if (gpu.index == device.index) {
      snapshot.device_total_bytes = gpu.total_bytes;
      snapshot.device_free_bytes = gpu.free_bytes;
      return;
    }
  }
  throw Error(fmt::format("cannot read the memory of {}: NVML lists {} GPU(s) ({})", device.str(),
                          gpus.size(), status));
}

std::string read_device_name(const Device& device) {
  if (device.is_cpu()) {
    return read_cpu_info().model_name;
  }
  std::string status;
  for (const GpuInfo& gpu : read_gpu_info(status)) {
    if (gpu.index == device.index) {
      return gpu.name;
    }
  }
  return "unknown GPU";
}

nlohmann::json optional_json(const std::optional<std::uint64_t>& value) {
  return value ? nlohmann::json(*value) : nlohmann::json(nullptr);
}

nlohmann::json optional_json(const std::optional<double>& value) {
  return value ? nlohmann::json(*value) : nlohmann::json(nullptr);
}

std::optional<double> ratio(double b, double a) {
  if (a == 0.0) {
    return std::nullopt;
  }
  return b / a;
}

}  // namespace

nlohmann::json MemorySnapshot::to_json() const {
  return {{"timestamp", timestamp},
          {"device", device},
          {"device_name", device_name},
          {"device_allocated_bytes", device_allocated_bytes},
          {"device_reserved_bytes", device_reserved_bytes},
          {"device_total_bytes", device_total_bytes},
          {"device_free_bytes", device_free_bytes},
          {"system_total_bytes", system_total_bytes},
          {"system_used_bytes", system_used_bytes},
          {"system_available_bytes", system_available_bytes},
          {"host_available_bytes", host_available_bytes},
          {"cgroup_limit_bytes", optional_json(cgroup_limit_bytes)},
          {"cgroup_usage_bytes", optional_json(cgroup_usage_bytes)},
          {"process_rss_bytes", process_rss_bytes},
          {"process_peak_rss_bytes", process_peak_rss_bytes},
          {"pinned_bytes", pinned_bytes}};
}

// ---------------------------------------------------------------------------------------------
// MemoryProfiler

MemoryProfiler::MemoryProfiler(Device device) : device_(device) {
  current_allocator(device_);  // throws when the build has no allocator for the device
  device_name_ = read_device_name(device_);
}

MemoryProfiler::~MemoryProfiler() {
  try {
    stop_sampling();
  } catch (const std::exception& e) {
    spdlog::error("memory sampler of {} failed and the error was not collected: {}", device_.str(),
                  e.what());
  } catch (...) {
    spdlog::error("memory sampler of {} failed with a non-standard exception", device_.str());
  }
}

MemorySnapshot MemoryProfiler::take_snapshot() const {
  MemorySnapshot snapshot;
  snapshot.timestamp = seconds_since_epoch();
  snapshot.device = device_.str();
  snapshot.device_name = device_name_;
  read_host_figures(snapshot);

  const Allocator& allocator = current_allocator(device_);
  const AllocatorStats stats = allocator.stats();
  snapshot.device_allocated_bytes = non_negative(stats.allocated_bytes.current);
  snapshot.device_reserved_bytes = non_negative(stats.reserved_bytes.current);
  if (device_.is_cpu()) {
    read_cpu_device_figures(snapshot, allocator);
  } else {
    read_gpu_device_figures(snapshot, device_);
  }
  // NOTE: no allocator pins host memory yet (the CPU backend has no use for it), so
  // pinned_bytes stays 0 until a GPU backend reports it.
  snapshot.pinned_bytes = 0;
  return snapshot;
}

void MemoryProfiler::start_sampling(std::chrono::milliseconds interval) {
  if (interval.count() < 1) {
    throw InvalidInputError(fmt::format(
        "memory sampling interval {} ms is invalid; use 1 ms or more", interval.count()));
  }
  if (on_sampler_thread()) {
    throw std::logic_error("start_sampling: a snapshot subscriber must not start the sampler");
  }
  std::lock_guard control(control_mutex_);
  if (sampler_.joinable()) {
    throw std::logic_error("start_sampling: sampling already runs; call stop_sampling first");
  }
  {
    std::lock_guard lock(mutex_);
    stop_requested_ = false;
    samples_.clear();
    marks_.clear();
    sampler_error_ = nullptr;
  }
  running_ = true;
  try {
    sampler_ = std::thread([this, interval] {
      sampler_id_ = std::this_thread::get_id();
      run_sampler(interval);
      sampler_id_ = std::thread::id();
      running_ = false;
    });
  } catch (...) {
    running_ = false;
    throw;
  }
}

void MemoryProfiler::stop_sampling() {
  // Checked before taking the lock: a concurrent stop_sampling() holds it while it joins this
  // thread.
  if (on_sampler_thread()) {
    throw std::logic_error("stop_sampling: a snapshot subscriber must not stop the sampler");
  }
  std::lock_guard control(control_mutex_);
  if (!sampler_.joinable()) {
    return;
  }
  {
    std::lock_guard lock(mutex_);
    stop_requested_ = true;
  }
  wake_.notify_all();
  sampler_.join();

  std::exception_ptr error;
  {
    std::lock_guard lock(mutex_);
    std::swap(error, sampler_error_);
  }
  if (error) {
    std::rethrow_exception(error);
  }
}

bool MemoryProfiler::on_sampler_thread() const {
  return sampler_id_.load() == std::this_thread::get_id();
}

bool MemoryProfiler::sampling() const {
  return running_.load();
}

void MemoryProfiler::mark_stage(std::string name) {
  StageMark mark{std::move(name), seconds_since_epoch()};
  std::lock_guard lock(mutex_);
  marks_.push_back(std::move(mark));
}

std::vector<MemorySnapshot> MemoryProfiler::samples() const {
  std::lock_guard lock(mutex_);
  return samples_;
}

std::vector<StageMark> MemoryProfiler::marks() const {
  std::lock_guard lock(mutex_);
  return marks_;
}

MemoryProfiler::SubscriptionId MemoryProfiler::on_snapshot(SnapshotCallback callback) {
  std::lock_guard lock(mutex_);
  const SubscriptionId id = next_subscription_++;
  subscribers_.emplace(id, std::move(callback));
  return id;
}

void MemoryProfiler::remove_subscriber(SubscriptionId id) {
  std::lock_guard delivery(delivery_mutex_);
  std::lock_guard lock(mutex_);
  subscribers_.erase(id);
}

void MemoryProfiler::record(const MemorySnapshot& snapshot) {
  std::lock_guard delivery(delivery_mutex_);
  std::vector<SubscriptionId> ids;
  {
    std::lock_guard lock(mutex_);
    samples_.push_back(snapshot);
    for (const auto& [id, callback] : subscribers_) {
      ids.push_back(id);
    }
  }
  // Looks each callback up again before calling it, because an earlier callback may have
  // removed it.
  for (const SubscriptionId id : ids) {
    SnapshotCallback callback;
    {
      std::lock_guard lock(mutex_);
      const auto found = subscribers_.find(id);
      if (found == subscribers_.end()) {
        continue;
      }
      callback = found->second;
    }
    callback(snapshot);
  }
}

void MemoryProfiler::run_sampler(std::chrono::milliseconds interval) {
  // The first sample is taken at once. Each wait ends after the interval or at a stop request,
  // and the sample taken after the stop request is the last.
  std::unique_lock lock(mutex_);
  bool last = false;
  while (true) {
    lock.unlock();
    try {
      record(take_snapshot());
    } catch (...) {
      lock.lock();
      sampler_error_ = std::current_exception();
      return;
    }
    lock.lock();
    if (last) {
      return;
    }
    wake_.wait_for(lock, interval, [this] { return stop_requested_; });
    last = stop_requested_;
  }
}

// ---------------------------------------------------------------------------------------------
// SamplingScope

SamplingScope::SamplingScope(MemoryProfiler& profiler, std::chrono::milliseconds interval)
    : profiler_(profiler) {
  profiler_.start_sampling(interval);
}

SamplingScope::~SamplingScope() {
  if (!active_) {
    return;
  }
  try {
    profiler_.stop_sampling();
  } catch (const std::exception& e) {
    spdlog::error("memory sampler of {} failed: {}", profiler_.device().str(), e.what());
  } catch (...) {
    spdlog::error("memory sampler of {} failed with a non-standard exception",
                  profiler_.device().str());
  }
}

void SamplingScope::stop() {
  if (active_) {
    active_ = false;
    profiler_.stop_sampling();
  }
}

// ---------------------------------------------------------------------------------------------
// Load profiles

LoadProfile MemoryProfiler::profile_model_loading(std::string name,
                                                  const std::function<void()>& load_fn,
                                                  std::chrono::milliseconds interval) {
  Allocator& allocator = current_allocator(device_);
  allocator.reset_peaks();
  const ProcessMemory before = read_process_memory();

  LoadProfile profile;
  profile.name = std::move(name);
  profile.device = device_.str();
  profile.started_at = seconds_since_epoch();
  profile.process_rss_before_bytes = before.resident_bytes;

  SamplingScope scope(*this, interval);
  const auto start = std::chrono::steady_clock::now();
  load_fn();
  profile.load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  scope.stop();

  const AllocatorStats stats = allocator.stats();
  const ProcessMemory after = read_process_memory();
  profile.device_peak_allocated_bytes = non_negative(stats.allocated_bytes.peak);
  profile.device_peak_reserved_bytes = non_negative(stats.reserved_bytes.peak);
  profile.device_allocated_after_bytes = non_negative(stats.allocated_bytes.current);
  profile.process_rss_after_bytes = after.resident_bytes;
  profile.samples = samples();
  profile.marks = marks();

  // VmHWM is the peak over the process's life. When the call raised it, it is the call's exact
  // peak. Otherwise the samples and the readings around the call are the best bound.
  std::uint64_t host_peak = std::max(before.resident_bytes, after.resident_bytes);
  if (after.peak_resident_bytes > before.peak_resident_bytes) {
    host_peak = std::max(host_peak, after.peak_resident_bytes);
  }
  for (const MemorySnapshot& sample : profile.samples) {
    host_peak = std::max(host_peak, sample.process_rss_bytes);
  }
  profile.peak_bytes_per_tier[std::string(kDeviceTier)] = profile.device_peak_reserved_bytes;
  profile.peak_bytes_per_tier[std::string(kHostTier)] = host_peak;
  return profile;
}

nlohmann::json LoadProfile::to_json() const {
  nlohmann::json sample_list = nlohmann::json::array();
  for (const MemorySnapshot& sample : samples) {
    sample_list.push_back(sample.to_json());
  }
  nlohmann::json mark_list = nlohmann::json::array();
  for (const StageMark& mark : marks) {
    mark_list.push_back({{"name", mark.name}, {"timestamp", mark.timestamp}});
  }
  return {{"format", "ethereal-load-profile"},
          {"version", 1},
          {"name", name},
          {"device", device},
          {"started_at", started_at},
          {"load_s", load_s},
          {"peak_bytes_per_tier", peak_bytes_per_tier},
          {"device_peak_allocated_bytes", device_peak_allocated_bytes},
          {"device_peak_reserved_bytes", device_peak_reserved_bytes},
          {"device_allocated_after_bytes", device_allocated_after_bytes},
          {"process_rss_before_bytes", process_rss_before_bytes},
          {"process_rss_after_bytes", process_rss_after_bytes},
          {"samples", sample_list},
          {"marks", mark_list}};
}

ProfileComparison compare_profiles(const LoadProfile& a, const LoadProfile& b) {
  ProfileComparison comparison;
  comparison.name_a = a.name;
  comparison.name_b = b.name;
  comparison.load_s_a = a.load_s;
  comparison.load_s_b = b.load_s;
  comparison.load_s_difference = b.load_s - a.load_s;
  comparison.load_s_ratio = ratio(b.load_s, a.load_s);

  for (const auto& [tier, bytes] : a.peak_bytes_per_tier) {
    comparison.tiers[tier].peak_a_bytes = bytes;
  }
  for (const auto& [tier, bytes] : b.peak_bytes_per_tier) {
    comparison.tiers[tier].peak_b_bytes = bytes;
  }
  for (auto& [tier, change] : comparison.tiers) {
    change.difference_bytes = static_cast<std::int64_t>(change.peak_b_bytes) -
                              static_cast<std::int64_t>(change.peak_a_bytes);
    change.ratio =
        ratio(static_cast<double>(change.peak_b_bytes), static_cast<double>(change.peak_a_bytes));
  }
  return comparison;
}

nlohmann::json ProfileComparison::to_json() const {
  nlohmann::json tier_list = nlohmann::json::object();
  for (const auto& [tier, change] : tiers) {
    tier_list[tier] = {{"peak_a_bytes", change.peak_a_bytes},
                       {"peak_b_bytes", change.peak_b_bytes},
                       {"difference_bytes", change.difference_bytes},
                       {"ratio", optional_json(change.ratio)}};
  }
  return {{"name_a", name_a},
          {"name_b", name_b},
          {"load_s_a", load_s_a},
          {"load_s_b", load_s_b},
          {"load_s_difference", load_s_difference},
          {"load_s_ratio", optional_json(load_s_ratio)},
          {"peak_bytes_per_tier", tier_list}};
}

}  // namespace ethereal::memory
