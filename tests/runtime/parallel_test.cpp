#include "runtime/parallel.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

namespace ethereal {
namespace {

TEST(ParallelFor, CoversRangeExactlyOnce) {
  for (std::int64_t size : {0, 1, 7, 1000, 100'003}) {
    std::vector<std::atomic<int>> hits(static_cast<std::size_t>(size));
    parallel_for(0, size, 16, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i) {
        hits[static_cast<std::size_t>(i)]++;
      }
    });
    for (std::int64_t i = 0; i < size; ++i) {
      ASSERT_EQ(hits[static_cast<std::size_t>(i)].load(), 1) << "size " << size << " index " << i;
    }
  }
}

TEST(ParallelFor, RespectsGrain) {
  std::atomic<int> chunks = 0;
  parallel_for(0, 100, 100, [&](std::int64_t begin, std::int64_t end) {
    EXPECT_EQ(begin, 0);
    EXPECT_EQ(end, 100);
    chunks++;
  });
  EXPECT_EQ(chunks.load(), 1);
}

TEST(ThreadCount, DefaultsToUsableCores) {
  EXPECT_GE(usable_core_count(), 1);
  set_thread_count(0);
  EXPECT_EQ(thread_count(), usable_core_count());
  set_thread_count(1);
  EXPECT_EQ(thread_count(), 1);
  set_thread_count(0);
}

}  // namespace
}  // namespace ethereal
