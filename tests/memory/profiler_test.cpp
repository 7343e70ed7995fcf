#include "memory/profiler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "memory_test_support.h"
#include "runtime/allocator.h"
#include "runtime/error.h"

namespace ethereal::memory {
namespace {

using testing::error_message;

constexpr std::uint64_t kMiB = 1024 * 1024;
constexpr std::chrono::milliseconds kFastInterval{1};

TEST(MemorySnapshot, FiguresAreConsistent) {
  CpuCachingAllocator allocator;
  ScopedAllocator scope(allocator);
  Allocation block = allocator.allocate(8 * kMiB);
  std::memset(block.address, 1, block.size);

  const MemoryProfiler profiler;
  const MemorySnapshot snapshot = profiler.take_snapshot();
  const AllocatorStats stats = allocator.stats();
  allocator.deallocate(block);

  EXPECT_EQ(snapshot.device, "cpu");
  EXPECT_FALSE(snapshot.device_name.empty());
  EXPECT_GT(snapshot.timestamp, 1.6e9) << "seconds since the Unix epoch";
  EXPECT_EQ(snapshot.device_allocated_bytes,
            static_cast<std::uint64_t>(stats.allocated_bytes.current));
  EXPECT_EQ(snapshot.device_reserved_bytes,
            static_cast<std::uint64_t>(stats.reserved_bytes.current));
  EXPECT_GE(snapshot.device_allocated_bytes, 8 * kMiB);

  EXPECT_GT(snapshot.system_total_bytes, 0u);
  EXPECT_LE(snapshot.system_available_bytes, snapshot.system_total_bytes);
  EXPECT_EQ(snapshot.system_used_bytes,
            snapshot.system_total_bytes - snapshot.system_available_bytes);
  EXPECT_LE(snapshot.host_available_bytes, snapshot.system_available_bytes);
  EXPECT_GT(snapshot.process_rss_bytes, 8 * kMiB) << "the block above is resident";
  EXPECT_GE(snapshot.process_peak_rss_bytes, snapshot.process_rss_bytes);
  EXPECT_EQ(snapshot.pinned_bytes, 0u);

  std::uint64_t expected_total = snapshot.system_total_bytes;
  if (snapshot.cgroup_limit_bytes) {
    expected_total = std::min(expected_total, *snapshot.cgroup_limit_bytes);
    EXPECT_LE(snapshot.host_available_bytes, *snapshot.cgroup_limit_bytes);
  }
  EXPECT_EQ(snapshot.device_total_bytes, expected_total);
  EXPECT_EQ(snapshot.device_free_bytes, snapshot.host_available_bytes);
  EXPECT_LE(snapshot.device_free_bytes, snapshot.device_total_bytes);
}

TEST(MemorySnapshot, CapacityBoundsDevice) {
  CpuCachingAllocator allocator(CpuCachingAllocator::Options{.capacity = 64 * kMiB});
  ScopedAllocator scope(allocator);
  Allocation block = allocator.allocate(8 * kMiB);

  const MemorySnapshot snapshot = MemoryProfiler().take_snapshot();
  allocator.deallocate(block);

  EXPECT_EQ(snapshot.device_total_bytes,
            std::min<std::uint64_t>(64 * kMiB, snapshot.system_total_bytes));
  EXPECT_EQ(snapshot.device_free_bytes,
            std::min<std::uint64_t>(64 * kMiB - snapshot.device_reserved_bytes,
                                    snapshot.host_available_bytes));
  EXPECT_LE(snapshot.device_free_bytes, 56 * kMiB);
}

TEST(MemorySnapshot, ToJson) {
  MemorySnapshot snapshot;
  snapshot.timestamp = 1700000000.25;
  snapshot.device = "cpu";
  snapshot.device_allocated_bytes = 123;
  snapshot.cgroup_usage_bytes = 77;
  const nlohmann::json json = snapshot.to_json();
  EXPECT_EQ(json.at("timestamp").get<double>(), 1700000000.25);
  EXPECT_EQ(json.at("device"), "cpu");
  EXPECT_EQ(json.at("device_allocated_bytes"), 123);
  EXPECT_TRUE(json.at("cgroup_limit_bytes").is_null());
  EXPECT_EQ(json.at("cgroup_usage_bytes"), 77);
  for (const char* key :
       {"device_name", "device_reserved_bytes", "device_total_bytes", "device_free_bytes",
        "system_total_bytes", "system_used_bytes", "system_available_bytes", "host_available_bytes",
        "process_rss_bytes", "process_peak_rss_bytes", "pinned_bytes"}) {
    EXPECT_TRUE(json.contains(key)) << key;
  }
}

TEST(MemoryProfiler, RejectsUnavailableDevice) {
  EXPECT_THROW(MemoryProfiler(Device::cuda(0)), InvalidInputError);
}

TEST(MemoryProfiler, SamplesAndMarksInOrder) {
  MemoryProfiler profiler;
  profiler.start_sampling(kFastInterval);
  EXPECT_TRUE(profiler.sampling());
  profiler.mark_stage("text_encoding");
  profiler.mark_stage("denoising_step 1");
  profiler.mark_stage("vae_decode");
  profiler.stop_sampling();
  EXPECT_FALSE(profiler.sampling());

  const std::vector<MemorySnapshot> samples = profiler.samples();
  ASSERT_GE(samples.size(), 2u) << "one sample at the start and one at the stop";
  for (const MemorySnapshot& sample : samples) {
    EXPECT_EQ(sample.device, "cpu");
    EXPECT_GT(sample.process_rss_bytes, 0u);
  }
  const std::vector<StageMark> marks = profiler.marks();
  ASSERT_EQ(marks.size(), 3u);
  EXPECT_EQ(marks[0].name, "text_encoding");
  EXPECT_EQ(marks[1].name, "denoising_step 1");
  EXPECT_EQ(marks[2].name, "vae_decode");

  // A new recording starts empty.
  profiler.start_sampling(kFastInterval);
  EXPECT_TRUE(profiler.marks().empty());
  profiler.stop_sampling();
  EXPECT_GE(profiler.samples().size(), 2u);
}

TEST(MemoryProfiler, SubscribersSeeEverySample) {
  MemoryProfiler profiler;
  std::atomic<int> calls{0};
  profiler.on_snapshot([&](const MemorySnapshot&) { ++calls; });
  profiler.start_sampling(kFastInterval);
  profiler.stop_sampling();
  EXPECT_EQ(static_cast<std::size_t>(calls.load()), profiler.samples().size());
}

TEST(MemoryProfiler, RemovedSubscriberIsNotCalled) {
  MemoryProfiler profiler;
  std::atomic<int> calls{0};
  const auto id = profiler.on_snapshot([&](const MemorySnapshot&) { ++calls; });
  profiler.start_sampling(kFastInterval);
  profiler.remove_subscriber(id);
  const int calls_at_removal = calls.load();
  profiler.stop_sampling();
  EXPECT_EQ(calls.load(), calls_at_removal);
}

TEST(MemoryProfiler, SubscriberExceptionSurfacesFromStop) {
  MemoryProfiler profiler;
  const auto id = profiler.on_snapshot(
      [](const MemorySnapshot&) { throw std::runtime_error("critical threshold crossed"); });
  profiler.start_sampling(kFastInterval);
  const std::string message = error_message<std::runtime_error>([&] { profiler.stop_sampling(); });
  EXPECT_EQ(message, "critical threshold crossed");
  EXPECT_FALSE(profiler.sampling());
  EXPECT_NO_THROW(profiler.stop_sampling()) << "the error is reported once";

  profiler.remove_subscriber(id);
  profiler.start_sampling(kFastInterval);
  EXPECT_NO_THROW(profiler.stop_sampling());
}

TEST(MemoryProfiler, SubscriberMustNotStopSampler) {
  MemoryProfiler profiler;
  profiler.on_snapshot([&](const MemorySnapshot&) { profiler.stop_sampling(); });
  profiler.start_sampling(kFastInterval);
  EXPECT_THROW(profiler.stop_sampling(), std::logic_error);
}

TEST(MemoryProfiler, RejectsInvalidSamplingCalls) {
  MemoryProfiler profiler;
  EXPECT_THROW(profiler.start_sampling(std::chrono::milliseconds(0)), InvalidInputError);
  profiler.start_sampling(kFastInterval);
  EXPECT_THROW(profiler.start_sampling(kFastInterval), std::logic_error);
  profiler.stop_sampling();
  EXPECT_NO_THROW(profiler.stop_sampling()) << "stopping twice is harmless";
}

TEST(MemoryProfiler, DestructorStopsSampler) {
  std::atomic<int> calls{0};
  {
    MemoryProfiler profiler;
    profiler.on_snapshot([&](const MemorySnapshot&) { ++calls; });
    profiler.start_sampling(kFastInterval);
  }
  const int calls_after_destruction = calls.load();
  EXPECT_GE(calls_after_destruction, 2);
  {
    MemoryProfiler failing;
    failing.on_snapshot([](const MemorySnapshot&) { throw std::runtime_error("lost?"); });
    failing.start_sampling(kFastInterval);
    // The destructor logs the error; it must neither throw nor hang.
  }
}

TEST(SamplingScope, StopRethrows) {
  MemoryProfiler profiler;
  profiler.on_snapshot([](const MemorySnapshot&) { throw std::runtime_error("monitor failed"); });
  SamplingScope scope(profiler, kFastInterval);
  EXPECT_THROW(scope.stop(), std::runtime_error);
  EXPECT_NO_THROW(scope.stop());
}

TEST(SamplingScope, SamplesForItsLifetime) {
  MemoryProfiler profiler;
  {
    SamplingScope scope(profiler, kFastInterval);
    EXPECT_TRUE(profiler.sampling());
  }
  EXPECT_FALSE(profiler.sampling());
  EXPECT_GE(profiler.samples().size(), 2u);
}

TEST(ProfileModelLoading, PeaksReflectAllocation) {
  CpuCachingAllocator allocator;
  ScopedAllocator scope(allocator);
  // A block from before the load: the peaks start from it, not from zero.
  Allocation earlier = allocator.allocate(4 * kMiB);
  MemoryProfiler profiler;
  Allocation weights;
  const LoadProfile profile = profiler.profile_model_loading(
      "tiny",
      [&] {
        profiler.mark_stage("transformer");
        weights = allocator.allocate(64 * kMiB);
        std::memset(weights.address, 1, weights.size);
        profiler.mark_stage("vae");
      },
      kFastInterval);
  allocator.deallocate(weights);
  allocator.deallocate(earlier);

  EXPECT_EQ(profile.name, "tiny");
  EXPECT_EQ(profile.device, "cpu");
  EXPECT_GE(profile.load_s, 0.0);
  EXPECT_GE(profile.device_peak_allocated_bytes, 68 * kMiB);
  EXPECT_GE(profile.device_peak_reserved_bytes, 68 * kMiB);
  EXPECT_LT(profile.device_peak_reserved_bytes, 72 * kMiB) << "nothing else was allocated";
  EXPECT_EQ(profile.peak_bytes_per_tier.at("device"), profile.device_peak_reserved_bytes);
  EXPECT_GE(profile.device_allocated_after_bytes, 68 * kMiB);
  // The 64 MiB block was resident when the last sample was taken. Other memory of the
  // process may shrink meanwhile, hence the 8 MiB allowance.
  EXPECT_GE(profile.peak_bytes_per_tier.at("host"), profile.process_rss_before_bytes + 56 * kMiB);
  EXPECT_GE(profile.process_rss_after_bytes, profile.process_rss_before_bytes + 56 * kMiB);
  ASSERT_GE(profile.samples.size(), 2u);
  EXPECT_GE(profile.samples.back().device_allocated_bytes, 68 * kMiB);
  ASSERT_EQ(profile.marks.size(), 2u);
  EXPECT_EQ(profile.marks[0].name, "transformer");
  EXPECT_EQ(profile.marks[1].name, "vae");
}

TEST(ProfileModelLoading, LoadErrorPropagates) {
  MemoryProfiler profiler;
  EXPECT_THROW(profiler.profile_model_loading(
                   "broken", [] { throw InvalidInputError("missing tensor"); }, kFastInterval),
               InvalidInputError);
  EXPECT_FALSE(profiler.sampling());
}

TEST(CompareProfiles, DifferencesAndRatios) {
  LoadProfile a;
  a.name = "bf16";
  a.load_s = 2.0;
  a.peak_bytes_per_tier = {{"device", 100}, {"host", 200}};
  LoadProfile b;
  b.name = "nf4";
  b.load_s = 3.0;
  b.peak_bytes_per_tier = {{"device", 50}, {"storage", 10}};

  const ProfileComparison comparison = compare_profiles(a, b);
  EXPECT_EQ(comparison.name_a, "bf16");
  EXPECT_EQ(comparison.name_b, "nf4");
  EXPECT_DOUBLE_EQ(comparison.load_s_difference, 1.0);
  ASSERT_TRUE(comparison.load_s_ratio);
  EXPECT_DOUBLE_EQ(*comparison.load_s_ratio, 1.5);

  ASSERT_EQ(comparison.tiers.size(), 3u);
  const TierComparison& device = comparison.tiers.at("device");
  EXPECT_EQ(device.difference_bytes, -50);
  ASSERT_TRUE(device.ratio);
  EXPECT_DOUBLE_EQ(*device.ratio, 0.5);
  const TierComparison& host = comparison.tiers.at("host");
  EXPECT_EQ(host.peak_b_bytes, 0u);
  EXPECT_EQ(host.difference_bytes, -200);
  EXPECT_DOUBLE_EQ(*host.ratio, 0.0);
  const TierComparison& storage = comparison.tiers.at("storage");
  EXPECT_EQ(storage.difference_bytes, 10);
  EXPECT_FALSE(storage.ratio) << "no ratio against 0 bytes";

  const nlohmann::json json = comparison.to_json();
  EXPECT_TRUE(json.at("peak_bytes_per_tier").at("storage").at("ratio").is_null());
  EXPECT_EQ(json.at("peak_bytes_per_tier").at("device").at("difference_bytes"), -50);

  a.load_s = 0.0;
  EXPECT_FALSE(compare_profiles(a, b).load_s_ratio);
}

}  // namespace
}  // namespace ethereal::memory
