// The process's one thread pool. oneDNN in Debian 12 runs on OpenMP, so our own kernels use
// the same OpenMP pool: one set of threads, one thread-count setting for everything.
#pragma once

#include <cstdint>
#include <functional>

namespace ethereal {

// Cores this process may use: the CPU affinity mask, further limited by the cgroup v2
// `cpu.max` quota when one is set. At least 1.
int usable_core_count();

// Sets the number of threads for our kernels and oneDNN; n <= 0 restores usable_core_count().
// Sets the calling thread's OpenMP setting (omp_set_num_threads) too.
void set_thread_count(int n);
// Returns the configured thread count. Before any set_thread_count() it is usable_core_count(),
// and the first call lowers the calling thread's OpenMP setting to it but never raises it.
int thread_count();

// Splits [begin, end) into chunks of at least `grain` items and runs `fn(chunk_begin,
// chunk_end)` on the pool. Uses at most min(thread_count(), omp_get_max_threads()) threads.
// Runs inline when the range is one chunk, when called from inside a parallel region, or when
// that minimum is 1.
// NOTE: OpenMP keeps omp_get_max_threads() per thread, and set_thread_count() sets it only for
// the calling thread. On other threads the OpenMP default caps thread_count(): OMP_NUM_THREADS,
// else (in GCC's libgomp) the number of CPUs in the affinity mask.
void parallel_for(std::int64_t begin, std::int64_t end, std::int64_t grain,
                  const std::function<void(std::int64_t, std::int64_t)>& fn);

}  // namespace ethereal
