// Caching allocators, one per device, with PyTorch-style statistics.
//
// Vocabulary: "requested" is what callers asked for; "allocated" is the rounded size of live
// blocks; "active" is the size of blocks not yet returned to the cache (equal to allocated on
// the CPU, where no stream can still be using a freed block); "reserved" is what the allocator
// holds from the system: allocated plus cached free blocks. Capacity bounds reserved.
//
// Rounding: requests up to 1 MiB round up to a multiple of 512 bytes; larger requests round up
// to a multiple of 64 KiB. Freed blocks are cached and reused for a later request of the same
// rounded size, or up to 1/8 larger. When a request would push reserved above capacity, the
// cache is emptied first and the request retried once; only then is it refused.
//
// Dry-run mode keeps the same rounding, caching and statistics but backs nothing: blocks have
// a null address and kernels skip their work. The planner runs the real pipeline this way.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "runtime/device.h"

namespace ethereal {

inline constexpr std::size_t kUnlimitedCapacity = std::numeric_limits<std::size_t>::max();

// A current value and its peak since the last reset_peaks().
struct StatValue {
  std::int64_t current = 0;
  std::int64_t peak = 0;

  void add(std::int64_t delta);
};

struct AllocatorStats {
  StatValue allocated_bytes;
  StatValue reserved_bytes;
  StatValue active_bytes;
  StatValue requested_bytes;
  std::int64_t allocation_count = 0;  // successful allocate() calls
  std::int64_t cache_hits = 0;        // allocations served from cached blocks
  std::int64_t cache_flushes = 0;     // times the cache was emptied to make room
  std::int64_t oom_count = 0;         // OutOfMemoryError thrown
};

// One block handed to a caller. `address` is null in dry-run mode and for zero-byte requests.
struct Allocation {
  void* address = nullptr;
  std::size_t size = 0;       // rounded block size
  std::size_t requested = 0;  // bytes the caller asked for
};

class Allocator {
 public:
  virtual ~Allocator() = default;

  // Throws OutOfMemoryError (never returns an invalid block).
  virtual Allocation allocate(std::size_t bytes) = 0;
  virtual void deallocate(const Allocation& allocation) noexcept = 0;

  virtual Device device() const = 0;
  virtual bool dry_run() const = 0;

  virtual AllocatorStats stats() const = 0;
  virtual void reset_peaks() = 0;

  // Maximum bytes this allocator may reserve, or kUnlimitedCapacity when only the system
  // limits it.
  virtual std::size_t capacity() const = 0;
  // Takes effect for the next allocation; blocks already reserved above it stay valid.
  virtual void set_capacity(std::size_t bytes) = 0;

  // Returns every cached free block to the system.
  virtual void empty_cache() = 0;

  // Makes the k-th allocate() call from now fail with OutOfMemoryError (k = 1: the next one).
  // k = 0 cancels a pending fault.
  virtual void fail_allocation_after(std::int64_t k) = 0;
};

// Caching allocator for process memory. Blocks of 1 MiB or more are anonymous mmap regions,
// so releasing them really lowers the resident set size; smaller ones come from the heap.
class CpuCachingAllocator final : public Allocator {
 public:
  struct Options {
    bool dry_run = false;
    std::size_t capacity = kUnlimitedCapacity;
    // Read ETHEREAL_FAIL_ALLOCATION (a positive k) for fault injection.
    bool read_environment = false;
  };

  CpuCachingAllocator();
  explicit CpuCachingAllocator(Options options);
  ~CpuCachingAllocator() override;

  CpuCachingAllocator(const CpuCachingAllocator&) = delete;
  CpuCachingAllocator& operator=(const CpuCachingAllocator&) = delete;

  Allocation allocate(std::size_t bytes) override;
  void deallocate(const Allocation& allocation) noexcept override;

  Device device() const override { return Device::cpu(); }
  bool dry_run() const override { return options_.dry_run; }

  AllocatorStats stats() const override;
  void reset_peaks() override;

  std::size_t capacity() const override;
  void set_capacity(std::size_t bytes) override;
  void empty_cache() override;
  void fail_allocation_after(std::int64_t k) override;

  // The rounding rule described at the top of this file.
  static std::size_t round_size(std::size_t bytes);

 private:
  std::optional<Allocation> take_cached(std::size_t rounded);
  Allocation reserve_new(std::size_t rounded, std::size_t requested);
  [[noreturn]] void throw_oom(std::size_t requested, const std::string& reason,
                              const std::string& remedy);
  void release_to_system(void* address, std::size_t size) noexcept;
  void empty_cache_locked();

  Options options_;
  mutable std::mutex mutex_;
  std::multimap<std::size_t, void*> cache_;  // size -> address (null in dry-run mode)
  AllocatorStats stats_;
  std::int64_t fail_countdown_ = 0;
};

// The allocator that tensors on `device` currently draw from: the process-wide default, or the
// one installed by the innermost ScopedAllocator.
Allocator& current_allocator(Device device);

// True when the current CPU allocator is in dry-run mode, so kernels must skip their work.
bool dry_run_active();

// Installs `allocator` as the current allocator for its device for the lifetime of this object.
// Process-wide: used by the planner (dry runs) and by tests; not meant to run concurrently
// with real work on the same device.
class ScopedAllocator {
 public:
  explicit ScopedAllocator(Allocator& allocator);
  ~ScopedAllocator();
  ScopedAllocator(const ScopedAllocator&) = delete;
  ScopedAllocator& operator=(const ScopedAllocator&) = delete;

 private:
  Device device_;
  Allocator* previous_;
};

// "123.4 MiB" for log and error messages.
std::string format_mib(std::size_t bytes);

}  // namespace ethereal
