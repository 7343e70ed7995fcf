#include "runtime/allocator.h"

#include <sys/mman.h>

#include <cstdlib>
#include <new>

#include <fmt/format.h>

#include "runtime/error.h"
#include "runtime/system_memory.h"

namespace ethereal {

namespace {

constexpr std::size_t kSmallRounding = 512;
constexpr std::size_t kLargeRounding = 64 * 1024;
constexpr std::size_t kLargeThreshold = 1024 * 1024;  // at and above: mmap, 64 KiB rounding
constexpr std::size_t kHeapAlignment = 64;

std::size_t round_up(std::size_t value, std::size_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

std::int64_t as_signed(std::size_t value) {
  return static_cast<std::int64_t>(value);
}

}  // namespace

void StatValue::add(std::int64_t delta) {
  current += delta;
  if (current > peak) {
    peak = current;
  }
}

std::string format_mib(std::size_t bytes) {
  return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
}

CpuCachingAllocator::CpuCachingAllocator() : CpuCachingAllocator(Options{}) {}

CpuCachingAllocator::CpuCachingAllocator(Options options) : options_(options) {
  if (options_.read_environment) {
    if (const char* value = std::getenv("ETHEREAL_FAIL_ALLOCATION")) {
      char* end = nullptr;
      const long long k = std::strtoll(value, &end, 10);
      if (end != value && *end == '\0' && k > 0) {
        fail_countdown_ = k;
      }
    }
  }
}

CpuCachingAllocator::~CpuCachingAllocator() {
  std::lock_guard lock(mutex_);
  empty_cache_locked();
}

std::size_t CpuCachingAllocator::round_size(std::size_t bytes) {
  if (bytes == 0) {
    return 0;
  }
  return bytes < kLargeThreshold ? round_up(bytes, kSmallRounding)
                                 : round_up(bytes, kLargeRounding);
}

Allocation CpuCachingAllocator::allocate(std::size_t bytes) {
  std::lock_guard lock(mutex_);
  if (fail_countdown_ > 0 && --fail_countdown_ == 0) {
    throw_oom(bytes, "injected allocation failure",
              "This failure was requested through fault injection (ETHEREAL_FAIL_ALLOCATION "
              "or fail_allocation_after); unset it to allocate normally");
  }
  const std::size_t rounded = round_size(bytes);
  Allocation allocation;
  if (auto cached = take_cached(rounded)) {
    allocation = *cached;
    ++stats_.cache_hits;
  } else {
    allocation = reserve_new(rounded, bytes);
  }
  allocation.requested = bytes;
  stats_.allocated_bytes.add(as_signed(allocation.size));
  stats_.active_bytes.add(as_signed(allocation.size));
  stats_.requested_bytes.add(as_signed(bytes));
  ++stats_.allocation_count;
  return allocation;
}

std::optional<Allocation> CpuCachingAllocator::take_cached(std::size_t rounded) {
  if (rounded == 0) {
    return std::nullopt;
  }
  // Best fit among cached blocks no more than 1/8 larger than the request.
  auto it = cache_.lower_bound(rounded);
  if (it == cache_.end() || it->first > rounded + rounded / 8) {
    return std::nullopt;
  }
  Allocation allocation{it->second, it->first, 0};
  cache_.erase(it);
  return allocation;
}

Allocation CpuCachingAllocator::reserve_new(std::size_t rounded, std::size_t requested) {
  const auto reserved = static_cast<std::size_t>(stats_.reserved_bytes.current);
  if (options_.capacity != kUnlimitedCapacity && reserved + rounded > options_.capacity) {
    if (!cache_.empty()) {
      ++stats_.cache_flushes;
      empty_cache_locked();
    }
    const auto after_flush = static_cast<std::size_t>(stats_.reserved_bytes.current);
    if (after_flush + rounded > options_.capacity) {
      throw_oom(requested, "the request exceeds the allocator's capacity",
                "Lower the working memory (smaller output size, chunked attention, tiled VAE) "
                "or choose a strategy with a smaller plan (ethereal plan lists them), or raise "
                "--memory-limit if the machine has the memory");
    }
  }

  Allocation allocation{nullptr, rounded, requested};
  if (rounded > 0 && !options_.dry_run) {
    if (rounded >= kLargeThreshold) {
      void* address =
          mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (address == MAP_FAILED) {
        throw_oom(requested, "the system refused the memory mapping (mmap failed)",
                  "Free host memory or choose a strategy with a smaller plan (ethereal plan "
                  "lists them)");
      }
      allocation.address = address;
    } else {
      allocation.address = std::aligned_alloc(kHeapAlignment, rounded);
      if (allocation.address == nullptr) {
        throw_oom(requested, "the system allocator failed (std::bad_alloc)",
                  "Free host memory or choose a strategy with a smaller plan (ethereal plan "
                  "lists them)");
      }
    }
  }
  stats_.reserved_bytes.add(as_signed(rounded));
  return allocation;
}

void CpuCachingAllocator::deallocate(const Allocation& allocation) noexcept {
  std::lock_guard lock(mutex_);
  stats_.allocated_bytes.add(-as_signed(allocation.size));
  stats_.active_bytes.add(-as_signed(allocation.size));
  stats_.requested_bytes.add(-as_signed(allocation.requested));
  if (allocation.size > 0) {
    cache_.emplace(allocation.size, allocation.address);
  }
}

void CpuCachingAllocator::throw_oom(std::size_t requested, const std::string& reason,
                                    const std::string& remedy) {
  ++stats_.oom_count;
  OutOfMemoryError::Figures figures;
  figures.device = options_.dry_run ? "cpu (dry run)" : "cpu";
  figures.requested_bytes = requested;
  figures.allocated_bytes = static_cast<std::size_t>(stats_.allocated_bytes.current);
  figures.reserved_bytes = static_cast<std::size_t>(stats_.reserved_bytes.current);
  figures.capacity_bytes = options_.capacity;
  const std::size_t system_free = host_available_bytes();
  if (options_.capacity == kUnlimitedCapacity) {
    figures.free_bytes = system_free;
  } else {
    const std::size_t headroom =
        options_.capacity > figures.reserved_bytes ? options_.capacity - figures.reserved_bytes : 0;
    figures.free_bytes = options_.dry_run ? headroom : std::min(headroom, system_free);
  }
  throw OutOfMemoryError(figures, reason, remedy);
}

void CpuCachingAllocator::release_to_system(void* address, std::size_t size) noexcept {
  if (address == nullptr) {
    return;
  }
  if (size >= kLargeThreshold) {
    munmap(address, size);
  } else {
    std::free(address);
  }
}

void CpuCachingAllocator::empty_cache_locked() {
  for (const auto& [size, address] : cache_) {
    release_to_system(address, size);
    stats_.reserved_bytes.add(-as_signed(size));
  }
  cache_.clear();
}

void CpuCachingAllocator::empty_cache() {
  std::lock_guard lock(mutex_);
  empty_cache_locked();
}

AllocatorStats CpuCachingAllocator::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void CpuCachingAllocator::reset_peaks() {
  std::lock_guard lock(mutex_);
  stats_.allocated_bytes.peak = stats_.allocated_bytes.current;
  stats_.reserved_bytes.peak = stats_.reserved_bytes.current;
  stats_.active_bytes.peak = stats_.active_bytes.current;
  stats_.requested_bytes.peak = stats_.requested_bytes.current;
}

std::size_t CpuCachingAllocator::capacity() const {
  std::lock_guard lock(mutex_);
  return options_.capacity;
}

void CpuCachingAllocator::set_capacity(std::size_t bytes) {
  std::lock_guard lock(mutex_);
  options_.capacity = bytes;
}

void CpuCachingAllocator::fail_allocation_after(std::int64_t k) {
  std::lock_guard lock(mutex_);
  fail_countdown_ = k > 0 ? k : 0;
}

// Registry of current allocators.

namespace {

std::mutex registry_mutex;
Allocator* cpu_override = nullptr;

CpuCachingAllocator& default_cpu_allocator() {
  static CpuCachingAllocator allocator(CpuCachingAllocator::Options{
      .dry_run = false, .capacity = kUnlimitedCapacity, .read_environment = true});
  return allocator;
}

}  // namespace

Allocator& current_allocator(Device device) {
  if (!device.is_cpu()) {
    throw InvalidInputError("device " + device.str() +
                            " is not available: this build has only the cpu backend");
  }
  std::lock_guard lock(registry_mutex);
  return cpu_override != nullptr ? *cpu_override : default_cpu_allocator();
}

bool dry_run_active() {
  return current_allocator(Device::cpu()).dry_run();
}

ScopedAllocator::ScopedAllocator(Allocator& allocator)
    : device_(allocator.device()), previous_(nullptr) {
  if (!device_.is_cpu()) {
    throw InvalidInputError("ScopedAllocator: device " + device_.str() + " is not available");
  }
  std::lock_guard lock(registry_mutex);
  previous_ = cpu_override;
  cpu_override = &allocator;
}

ScopedAllocator::~ScopedAllocator() {
  std::lock_guard lock(registry_mutex);
  cpu_override = previous_;
}

}  // namespace ethereal
