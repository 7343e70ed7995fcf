// Memory snapshots, a background sampler with stage marks, and load profiles.
//
// A snapshot is one reading of every memory figure of a device and the host: the device
// allocator's statistics, the device's total and free memory, host memory from /proc/meminfo,
// the cgroup limit and usage, and the process's resident set. On the CPU backend the device
// is host memory: its total is the host's total, bounded by the cgroup limit and by the
// allocator's capacity when one is set.
//
// A MemoryProfiler samples snapshots on a background thread at a fixed interval, records
// stage marks ("text_encoding", "denoising_step 3", "vae_decode", ...) with their times, and
// hands every sample to its subscribers (threshold monitors). Sampling takes one sample as it
// starts and one more as it stops, so even a recording shorter than the interval has two. An
// exception thrown by a subscriber, or by taking a snapshot, ends the sampling and is
// rethrown by stop_sampling(), so it is never lost.
//
// A load profile is a sampled recording of one model load with the peak bytes per tier.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/device.h"

namespace ethereal::memory {

inline constexpr std::chrono::milliseconds kDefaultSamplingInterval{50};

// Tier names used as keys of peak maps.
inline constexpr std::string_view kDeviceTier = "device";
inline constexpr std::string_view kHostTier = "host";

struct MemorySnapshot {
  double timestamp = 0.0;   // seconds since the Unix epoch
  std::string device;       // "cpu" or "cuda:N"
  std::string device_name;  // the CPU model or the GPU name
  // The current allocator of the device: bytes of live blocks and bytes held from the system.
  std::uint64_t device_allocated_bytes = 0;
  std::uint64_t device_reserved_bytes = 0;
  // CPU: min(MemTotal, cgroup limit, allocator capacity); GPU: the board's memory.
  std::uint64_t device_total_bytes = 0;
  // CPU: min(host_available_bytes, capacity - reserved when a capacity is set), the bytes the
  // allocator can still add to what it reserved. GPU: free memory as the driver reports it.
  std::uint64_t device_free_bytes = 0;
  std::uint64_t system_total_bytes = 0;      // MemTotal
  std::uint64_t system_used_bytes = 0;       // MemTotal - MemAvailable
  std::uint64_t system_available_bytes = 0;  // MemAvailable
  // MemAvailable bounded by the cgroup limit minus the cgroup usage.
  std::uint64_t host_available_bytes = 0;
  std::optional<std::uint64_t> cgroup_limit_bytes;  // absent without a limit or a controller
  std::optional<std::uint64_t> cgroup_usage_bytes;  // absent without a controller
  std::uint64_t process_rss_bytes = 0;              // VmRSS
  std::uint64_t process_peak_rss_bytes = 0;         // VmHWM
  // Page-locked host memory held for transfers to a GPU.
  std::uint64_t pinned_bytes = 0;

  // Every field under its own name; absent optionals are null.
  nlohmann::json to_json() const;
};

struct StageMark {
  std::string name;
  double timestamp = 0.0;  // seconds since the Unix epoch
};

struct LoadProfile;

class MemoryProfiler {
 public:
  using SnapshotCallback = std::function<void(const MemorySnapshot&)>;
  using SubscriptionId = std::uint64_t;

  // Throws InvalidInputError when `device` has no allocator in this build.
  explicit MemoryProfiler(Device device = Device::cpu());
  // Stops sampling. An exception that a subscriber threw and stop_sampling() did not rethrow
  // is logged as an error, because a destructor cannot throw.
  ~MemoryProfiler();

  MemoryProfiler(const MemoryProfiler&) = delete;
  MemoryProfiler& operator=(const MemoryProfiler&) = delete;

  const Device& device() const { return device_; }

  // Reads every figure now. Thread-safe.
  MemorySnapshot take_snapshot() const;

  // Starts a new recording: clears earlier samples and marks and starts the sampler thread.
  // Throws InvalidInputError for an interval below 1 ms, std::logic_error when sampling is
  // already running.
  void start_sampling(std::chrono::milliseconds interval = kDefaultSamplingInterval);
  // Takes a last sample, joins the sampler thread and rethrows the first exception that a
  // subscriber or a snapshot threw since start_sampling(). Does nothing when not sampling.
  // Throws std::logic_error when called from a subscriber.
  void stop_sampling();
  // True while the sampler thread runs: false after stop_sampling() and after a subscriber
  // threw.
  bool sampling() const;

  // Records the start of a stage at the current time, whether or not sampling runs.
  void mark_stage(std::string name);

  // Copies of the recording so far, in time order. Samples grow by one per interval (an
  // estimated 200 bytes each) until the next start_sampling().
  std::vector<MemorySnapshot> samples() const;
  std::vector<StageMark> marks() const;

  // Calls `callback` on the sampler thread with every sample, in order. Callbacks must not
  // call start_sampling() or stop_sampling(). When remove_subscriber() returns, the callback
  // is not running and will not be called again.
  SubscriptionId on_snapshot(SnapshotCallback callback);
  void remove_subscriber(SubscriptionId id);

  // Runs `load_fn` while sampling and returns its profile. Resets the peak statistics of the
  // device's current allocator first (process-wide), so the device peaks are those of the
  // call. The host peak is the highest resident set size seen: the process's VmHWM when the
  // call raised it, the highest sample otherwise. An exception from `load_fn` propagates after
  // sampling stops. Throws std::logic_error when sampling is already running.
  LoadProfile profile_model_loading(std::string name, const std::function<void()>& load_fn,
                                    std::chrono::milliseconds interval = kDefaultSamplingInterval);

 private:
  bool on_sampler_thread() const;
  void run_sampler(std::chrono::milliseconds interval);
  // Appends `snapshot` to the samples and delivers it to the subscribers.
  void record(const MemorySnapshot& snapshot);

  Device device_;
  std::string device_name_;

  // Serialises start_sampling() and stop_sampling().
  std::mutex control_mutex_;
  std::thread sampler_;
  // True from start_sampling() until the sampler thread ends.
  std::atomic<bool> running_{false};
  // The sampler thread's id while it runs, so calls from subscribers can be recognised.
  std::atomic<std::thread::id> sampler_id_{};

  // Held while callbacks run, so remove_subscriber() can wait for a delivery in progress.
  // Recursive because a callback may remove a subscriber.
  std::recursive_mutex delivery_mutex_;

  mutable std::mutex mutex_;  // guards the members below
  std::condition_variable wake_;
  bool stop_requested_ = false;
  std::vector<MemorySnapshot> samples_;
  std::vector<StageMark> marks_;
  std::map<SubscriptionId, SnapshotCallback> subscribers_;
  SubscriptionId next_subscription_ = 1;
  std::exception_ptr sampler_error_;
};

// Samples for the lifetime of the scope. Prefer stop() at the end of the scope: it rethrows a
// subscriber's exception, which the destructor can only log.
class SamplingScope {
 public:
  SamplingScope(MemoryProfiler& profiler,
                std::chrono::milliseconds interval = kDefaultSamplingInterval);
  ~SamplingScope();

  SamplingScope(const SamplingScope&) = delete;
  SamplingScope& operator=(const SamplingScope&) = delete;

  void stop();

 private:
  MemoryProfiler& profiler_;
  bool active_ = true;
};

// The recording of one model load.
struct LoadProfile {
  std::string name;
  std::string device;
  double started_at = 0.0;  // seconds since the Unix epoch
  double load_s = 0.0;
  // Peak bytes per tier during the load: "device" is the allocator's peak reserved bytes,
  // "host" the process's peak resident set. On the CPU backend both are process memory.
  std::map<std::string, std::uint64_t> peak_bytes_per_tier;
  std::uint64_t device_peak_allocated_bytes = 0;
  std::uint64_t device_peak_reserved_bytes = 0;
  // Allocated bytes when the load returned: what the loaded model keeps.
  std::uint64_t device_allocated_after_bytes = 0;
  std::uint64_t process_rss_before_bytes = 0;
  std::uint64_t process_rss_after_bytes = 0;
  std::vector<MemorySnapshot> samples;
  std::vector<StageMark> marks;

  nlohmann::json to_json() const;
};

// Changes from profile a to profile b.
struct TierComparison {
  std::uint64_t peak_a_bytes = 0;
  std::uint64_t peak_b_bytes = 0;
  std::int64_t difference_bytes = 0;  // b - a
  std::optional<double> ratio;        // b / a; absent when a is 0
};

struct ProfileComparison {
  std::string name_a;
  std::string name_b;
  double load_s_a = 0.0;
  double load_s_b = 0.0;
  double load_s_difference = 0.0;      // b - a
  std::optional<double> load_s_ratio;  // b / a; absent when a is 0
  // Every tier of either profile; a tier missing from one profile counts as 0 there.
  std::map<std::string, TierComparison> tiers;

  nlohmann::json to_json() const;
};

ProfileComparison compare_profiles(const LoadProfile& a, const LoadProfile& b);

// Writes the profile as JSON to a temporary file next to `path` and renames it over `path`.
// Throws IoError naming the file when writing fails.
void save_profile(const LoadProfile& profile, const std::filesystem::path& path);
// Reads a file written by save_profile. Throws InvalidInputError naming the file and the field
// (for example "samples[2].process_rss_bytes") for a missing file, invalid JSON, another format
// or version, a missing field or a value of the wrong type.
LoadProfile load_profile(const std::filesystem::path& path);

}  // namespace ethereal::memory
