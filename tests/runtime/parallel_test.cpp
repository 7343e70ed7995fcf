#include "runtime/parallel.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <set>
#include <thread>
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

// Restores the default thread count at scope exit, so a failed assertion leaves no setting
// behind for later tests.
struct DefaultThreadCountAtExit {
  ~DefaultThreadCountAtExit() { set_thread_count(0); }
};

// What one parallel_for over 64 single-item chunks saw: the OpenMP team sizes its chunks ran
// in and the threads that ran them.
struct ParallelForRun {
  std::thread::id caller;
  std::set<int> team_sizes;
  std::set<std::thread::id> threads;
};

// Runs `prepare` and then parallel_for on a new thread, as a block streamer's worker does.
ParallelForRun run_on_new_thread(const std::function<void()>& prepare) {
  ParallelForRun run;
  std::mutex mutex;
  std::thread caller([&] {
    prepare();
    parallel_for(0, 64, 1, [&](std::int64_t, std::int64_t) {
      const std::lock_guard lock(mutex);
      run.team_sizes.insert(omp_get_num_threads());
      run.threads.insert(std::this_thread::get_id());
    });
  });
  run.caller = caller.get_id();
  caller.join();
  return run;
}

TEST(ParallelFor, HonoursCallersOmpThreadLimit) {
  const DefaultThreadCountAtExit restore;
  set_thread_count(4);
  const ParallelForRun limited = run_on_new_thread([] { omp_set_num_threads(1); });
  EXPECT_EQ(limited.team_sizes, std::set<int>{1});
  EXPECT_EQ(limited.threads, std::set<std::thread::id>{limited.caller});
}

TEST(ParallelFor, OtherThreadsKeepThreadCount) {
  int new_thread_default = 0;
  std::thread([&] { new_thread_default = omp_get_max_threads(); }).join();
  if (new_thread_default < 2) {
    GTEST_SKIP() << "OpenMP's default team on a new thread has one thread (one usable CPU or "
                    "OMP_NUM_THREADS=1)";
  }
  const DefaultThreadCountAtExit restore;
  set_thread_count(2);
  // A thread that lowers its own OpenMP setting does not change other threads' teams.
  (void)run_on_new_thread([] { omp_set_num_threads(1); });
  const ParallelForRun unlimited = run_on_new_thread([] {});
  EXPECT_EQ(unlimited.team_sizes, std::set<int>{thread_count()});
  EXPECT_EQ(thread_count(), 2);
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
