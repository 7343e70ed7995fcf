#include "support/allocator_runs.h"

#include <gtest/gtest.h>

namespace ethereal::test_support {

AllocatorStats stats_of_run(bool dry_run, const std::function<void()>& body) {
  CpuCachingAllocator allocator(CpuCachingAllocator::Options{.dry_run = dry_run});
  {
    ScopedAllocator scope(allocator);
    body();
  }
  return allocator.stats();
}

void expect_same_statistics(const AllocatorStats& real, const AllocatorStats& dry) {
  EXPECT_EQ(real.allocated_bytes.peak, dry.allocated_bytes.peak);
  EXPECT_EQ(real.reserved_bytes.peak, dry.reserved_bytes.peak);
  EXPECT_EQ(real.requested_bytes.peak, dry.requested_bytes.peak);
  EXPECT_EQ(real.allocation_count, dry.allocation_count);
  EXPECT_EQ(real.allocated_bytes.current, dry.allocated_bytes.current);
  EXPECT_GT(real.allocation_count, 0);
}

}  // namespace ethereal::test_support
