#include "runtime/allocator.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "runtime/error.h"
#include "runtime/system_memory.h"
#include "runtime/tensor.h"

namespace ethereal {
namespace {

constexpr std::size_t kMiB = 1024 * 1024;

TEST(CpuCachingAllocator, RoundsRequests) {
  EXPECT_EQ(CpuCachingAllocator::round_size(0), 0u);
  EXPECT_EQ(CpuCachingAllocator::round_size(1), 512u);
  EXPECT_EQ(CpuCachingAllocator::round_size(513), 1024u);
  EXPECT_EQ(CpuCachingAllocator::round_size(kMiB), kMiB);
  EXPECT_EQ(CpuCachingAllocator::round_size(kMiB + 1), kMiB + 64 * 1024);
}

TEST(CpuCachingAllocator, TracksStatisticsAndPeaks) {
  CpuCachingAllocator allocator;
  Allocation a = allocator.allocate(1000);
  Allocation b = allocator.allocate(3 * kMiB);
  ASSERT_NE(a.address, nullptr);
  ASSERT_NE(b.address, nullptr);

  AllocatorStats stats = allocator.stats();
  EXPECT_EQ(stats.requested_bytes.current, 1000 + 3 * static_cast<std::int64_t>(kMiB));
  EXPECT_EQ(stats.allocated_bytes.current, 1024 + 3 * static_cast<std::int64_t>(kMiB));
  EXPECT_EQ(stats.active_bytes.current, stats.allocated_bytes.current);
  EXPECT_EQ(stats.reserved_bytes.current, stats.allocated_bytes.current);
  EXPECT_EQ(stats.allocation_count, 2);

  allocator.deallocate(b);
  stats = allocator.stats();
  EXPECT_EQ(stats.allocated_bytes.current, 1024);
  EXPECT_EQ(stats.allocated_bytes.peak, 1024 + 3 * static_cast<std::int64_t>(kMiB));
  EXPECT_EQ(stats.reserved_bytes.current, 1024 + 3 * static_cast<std::int64_t>(kMiB))
      << "a freed block stays cached and reserved";

  allocator.reset_peaks();
  EXPECT_EQ(allocator.stats().allocated_bytes.peak, 1024);

  allocator.empty_cache();
  EXPECT_EQ(allocator.stats().reserved_bytes.current, 1024);
  allocator.deallocate(a);
  allocator.empty_cache();
  EXPECT_EQ(allocator.stats().reserved_bytes.current, 0);
}

TEST(CpuCachingAllocator, ReusesCachedBlocks) {
  CpuCachingAllocator allocator;
  Allocation first = allocator.allocate(2 * kMiB);
  void* address = first.address;
  allocator.deallocate(first);
  Allocation second = allocator.allocate(2 * kMiB - 100);
  EXPECT_EQ(second.address, address);
  EXPECT_EQ(allocator.stats().cache_hits, 1);
  // A block more than 1/8 larger than the request is not reused.
  allocator.deallocate(second);
  Allocation small = allocator.allocate(kMiB);
  EXPECT_NE(small.address, address);
  allocator.deallocate(small);
}

TEST(CpuCachingAllocator, RefusesBeyondCapacity) {
  CpuCachingAllocator allocator;
  allocator.set_capacity(4 * kMiB);
  Allocation a = allocator.allocate(3 * kMiB);
  try {
    allocator.allocate(2 * kMiB);
    FAIL() << "allocation beyond capacity succeeded";
  } catch (const OutOfMemoryError& error) {
    EXPECT_EQ(error.figures().requested_bytes, 2 * kMiB);
    EXPECT_EQ(error.figures().reserved_bytes, 3 * kMiB);
    EXPECT_EQ(error.figures().capacity_bytes, 4 * kMiB);
    EXPECT_EQ(error.figures().free_bytes, 1 * kMiB);
    const std::string message = error.what();
    EXPECT_NE(message.find("requested 2.0 MiB"), std::string::npos) << message;
    EXPECT_NE(message.find("capacity 4.0 MiB"), std::string::npos) << message;
    EXPECT_NE(message.find("ethereal plan"), std::string::npos) << message;
  }
  EXPECT_EQ(allocator.stats().oom_count, 1);

  // Raising the capacity at run time lets the same request through.
  allocator.set_capacity(8 * kMiB);
  Allocation b = allocator.allocate(2 * kMiB);
  allocator.deallocate(b);
  allocator.deallocate(a);
}

TEST(CpuCachingAllocator, EmptiesCacheBeforeRefusing) {
  CpuCachingAllocator allocator;
  allocator.set_capacity(4 * kMiB);
  Allocation a = allocator.allocate(3 * kMiB);
  allocator.deallocate(a);  // cached: reserved stays 3 MiB
  Allocation b = allocator.allocate(2 * kMiB);
  EXPECT_EQ(allocator.stats().cache_flushes, 1);
  EXPECT_EQ(allocator.stats().reserved_bytes.current, 2 * static_cast<std::int64_t>(kMiB));
  allocator.deallocate(b);
}

TEST(CpuCachingAllocator, InjectsFaultAtKthAllocation) {
  CpuCachingAllocator allocator;
  allocator.fail_allocation_after(3);
  Allocation a = allocator.allocate(100);
  Allocation b = allocator.allocate(100);
  EXPECT_THROW(allocator.allocate(100), OutOfMemoryError);
  Allocation c = allocator.allocate(100);  // only the k-th fails
  EXPECT_EQ(allocator.stats().oom_count, 1);
  EXPECT_EQ(allocator.stats().allocation_count, 3);
  for (const Allocation& allocation : {a, b, c}) {
    allocator.deallocate(allocation);
  }
}

TEST(CpuCachingAllocator, ReadsFaultInjectionFromEnvironment) {
  ::setenv("ETHEREAL_FAIL_ALLOCATION", "2", 1);
  CpuCachingAllocator allocator(CpuCachingAllocator::Options{.read_environment = true});
  ::unsetenv("ETHEREAL_FAIL_ALLOCATION");
  Allocation a = allocator.allocate(10);
  try {
    allocator.allocate(10);
    FAIL() << "the second allocation should fail";
  } catch (const OutOfMemoryError& error) {
    EXPECT_NE(std::string(error.what()).find("ETHEREAL_FAIL_ALLOCATION"), std::string::npos);
  }
  allocator.deallocate(a);
}

TEST(CpuCachingAllocator, DryRunCountsWithoutBacking) {
  CpuCachingAllocator real;
  CpuCachingAllocator dry(CpuCachingAllocator::Options{.dry_run = true});
  for (Allocator* allocator : {static_cast<Allocator*>(&real), static_cast<Allocator*>(&dry)}) {
    Allocation a = allocator->allocate(5 * kMiB);
    Allocation b = allocator->allocate(700);
    allocator->deallocate(a);
    Allocation c = allocator->allocate(5 * kMiB - 1);  // served from the cache
    allocator->deallocate(b);
    allocator->deallocate(c);
  }
  const AllocatorStats r = real.stats();
  const AllocatorStats d = dry.stats();
  EXPECT_EQ(d.allocated_bytes.peak, r.allocated_bytes.peak);
  EXPECT_EQ(d.reserved_bytes.peak, r.reserved_bytes.peak);
  EXPECT_EQ(d.reserved_bytes.current, r.reserved_bytes.current);
  EXPECT_EQ(d.cache_hits, r.cache_hits);

  Allocation huge = dry.allocate(std::size_t{1} << 44);  // 16 TiB costs nothing in a dry run
  EXPECT_EQ(huge.address, nullptr);
  dry.deallocate(huge);
}

TEST(ScopedAllocator, RoutesTensorsAndRestores) {
  CpuCachingAllocator dry(CpuCachingAllocator::Options{.dry_run = true});
  EXPECT_FALSE(dry_run_active());
  {
    ScopedAllocator scope(dry);
    EXPECT_TRUE(dry_run_active());
    Tensor t = Tensor::empty({1024, 1024}, DType::f32);
    EXPECT_TRUE(t.is_dry());
    EXPECT_EQ(dry.stats().allocated_bytes.current, 4 * static_cast<std::int64_t>(kMiB));
    EXPECT_THROW(t.data(), Error);
  }
  EXPECT_FALSE(dry_run_active());
  EXPECT_EQ(dry.stats().allocated_bytes.current, 0);
}

TEST(CpuCachingAllocator, ReleaseLowersResidentMemory) {
  CpuCachingAllocator allocator;
  const std::size_t bytes = 256 * kMiB;
  const std::uint64_t before = read_process_memory().resident_bytes;
  Allocation a = allocator.allocate(bytes);
  std::memset(a.address, 1, bytes);
  const std::uint64_t touched = read_process_memory().resident_bytes;
  EXPECT_GT(touched, before + bytes / 2);
  allocator.deallocate(a);
  allocator.empty_cache();
  const std::uint64_t released = read_process_memory().resident_bytes;
  EXPECT_LT(released, touched - bytes / 2);
}

}  // namespace
}  // namespace ethereal
