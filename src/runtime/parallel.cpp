#include "runtime/parallel.h"

#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <fstream>
#include <string>

namespace ethereal {

namespace {

// The cgroup v2 quota "cpu.max" is "QUOTA PERIOD" or "max PERIOD"; v1 has cfs_quota_us and
// cfs_period_us. Returns the quota in cores, rounded up, or 0 when none is set.
int cgroup_core_quota() {
  std::ifstream v2("/sys/fs/cgroup/cpu.max");
  std::string quota;
  long long period = 0;
  if (v2 >> quota >> period && quota != "max" && period > 0) {
    return static_cast<int>(std::ceil(std::stod(quota) / static_cast<double>(period)));
  }
  std::ifstream v1_quota("/sys/fs/cgroup/cpu/cpu.cfs_quota_us");
  std::ifstream v1_period("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
  long long quota_us = -1;
  if (v1_quota >> quota_us && v1_period >> period && quota_us > 0 && period > 0) {
    return static_cast<int>(std::ceil(static_cast<double>(quota_us) / static_cast<double>(period)));
  }
  return 0;
}

// 0 until set_thread_count() or the first thread_count() sets it.
std::atomic<int> configured_threads{0};

}  // namespace

int usable_core_count() {
  cpu_set_t set;
  CPU_ZERO(&set);
  int cores = 1;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    cores = std::max(1, CPU_COUNT(&set));
  }
  if (const int quota = cgroup_core_quota(); quota > 0) {
    cores = std::min(cores, quota);
  }
  return cores;
}

void set_thread_count(int n) {
  const int count = n > 0 ? n : usable_core_count();
  configured_threads.store(count);
  omp_set_num_threads(count);
}

int thread_count() {
  int count = configured_threads.load();
  if (count == 0) {
    int unset = 0;
    configured_threads.compare_exchange_strong(unset, usable_core_count());
    count = configured_threads.load();
    // The default only ever lowers the calling thread's OpenMP setting, so a thread that
    // limited itself (a block streamer's worker sets 1) keeps its limit.
    if (omp_get_max_threads() > count) {
      omp_set_num_threads(count);
    }
  }
  return count;
}

void parallel_for(std::int64_t begin, std::int64_t end, std::int64_t grain,
                  const std::function<void(std::int64_t, std::int64_t)>& fn) {
  if (end <= begin) {
    return;
  }
  grain = std::max<std::int64_t>(grain, 1);
  const std::int64_t range = end - begin;
  // omp_get_max_threads() is the calling thread's own setting, so a thread that called
  // omp_set_num_threads(1), such as a block streamer's worker, runs its loops inline.
  const int threads = std::min(thread_count(), omp_get_max_threads());
  const std::int64_t max_chunks = (range + grain - 1) / grain;
  if (threads <= 1 || max_chunks <= 1 || omp_in_parallel()) {
    fn(begin, end);
    return;
  }
  // A few chunks per thread balance uneven work without much scheduling overhead.
  const std::int64_t chunks = std::min<std::int64_t>(max_chunks, std::int64_t{threads} * 4);
  const std::int64_t chunk_size = (range + chunks - 1) / chunks;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::int64_t chunk_begin = begin + c * chunk_size;
    const std::int64_t chunk_end = std::min(end, chunk_begin + chunk_size);
    if (chunk_begin < chunk_end) {
      fn(chunk_begin, chunk_end);
    }
  }
}

}  // namespace ethereal
