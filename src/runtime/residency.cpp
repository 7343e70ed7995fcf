#include "runtime/residency.h"

#include <omp.h>

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace ethereal {

namespace {

std::string describe_exception(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& exception) {
    return exception.what();
  } catch (...) {
    return "an exception of unknown type";
  }
}

}  // namespace

std::string_view memory_tier_name(MemoryTier tier) {
  switch (tier) {
    case MemoryTier::device: return "device";
    case MemoryTier::host: return "host";
    case MemoryTier::pinned: return "pinned";
    case MemoryTier::storage: return "storage";
  }
  return "unknown";
}

std::string_view residency_event_kind_name(ResidencyEventKind kind) {
  switch (kind) {
    case ResidencyEventKind::onload_start: return "onload_start";
    case ResidencyEventKind::onload_end: return "onload_end";
    case ResidencyEventKind::offload: return "offload";
    case ResidencyEventKind::compute_start: return "compute_start";
    case ResidencyEventKind::compute_end: return "compute_end";
  }
  return "unknown";
}

ResidencyObserver::ResidencyObserver(ResidencyEventSink sink) : sink_(std::move(sink)) {}

void ResidencyObserver::emit(ResidencyEventKind kind, std::string_view group, std::int64_t index,
                             std::size_t bytes, MemoryTier home) const noexcept {
  if (!sink_) {
    return;
  }
  try {
    ResidencyEvent event;
    event.kind = kind;
    event.group = std::string(group);
    event.index = index;
    event.bytes = bytes;
    event.home = home;
    event.time = std::chrono::steady_clock::now();
    sink_(event);
  } catch (const std::exception& error) {
    spdlog::error("residency event sink failed on {} of {} {}: {}", residency_event_kind_name(kind),
                  group, index, error.what());
  } catch (...) {
    spdlog::error("residency event sink failed on {} of {} {} with an unknown exception",
                  residency_event_kind_name(kind), group, index);
  }
}

std::size_t current_allocated_bytes() {
  return static_cast<std::size_t>(
      std::max<std::int64_t>(0, current_allocator(Device::cpu()).stats().allocated_bytes.current));
}

BlockStreamer::BlockStreamer(BlockStreamOptions options, LoadFunction load)
    : options_(std::move(options)), load_(std::move(load)) {
  if (options_.block_count < 1) {
    throw std::invalid_argument(
        fmt::format("block streamer for {}: block_count must be at least 1, got {}", options_.group,
                    options_.block_count));
  }
  if (options_.kept_blocks < 1) {
    throw std::invalid_argument(
        fmt::format("block streamer for {}: kept_blocks must be at least 1, got {}", options_.group,
                    options_.kept_blocks));
  }
  // More kept blocks than the pass has would only hold a second copy of some blocks.
  options_.kept_blocks =
      static_cast<int>(std::min<std::int64_t>(options_.kept_blocks, options_.block_count));
  // A worker only helps when a second block can be on the device. A dry run must count
  // allocations in a fixed order, so it never starts one.
  if (options_.background && options_.kept_blocks > 1 && !dry_run_active()) {
    worker_ = std::thread([this] { run_worker(); });
  }
}

BlockStreamer::~BlockStreamer() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (worker_.joinable()) {
    worker_.join();
  }
  if (handed_out_ != 0) {
    spdlog::error("block streamer for {} destroyed while {} block(s) are still handed out",
                  options_.group, handed_out_);
  }
  // Blocks loaded ahead that no pass used are freed, and a failure no acquire() reported is
  // logged.
  for (Slot& slot : slots_) {
    const std::int64_t index = slot.sequence % options_.block_count;
    if (slot.error) {
      spdlog::warn("loading {} {} ahead of use failed, and the block was not needed: {}",
                   options_.group, index, describe_exception(slot.error));
      continue;
    }
    if (slot.ready) {
      const std::size_t bytes = slot.block.bytes;
      slot.block.value.reset();
      emit(ResidencyEventKind::offload, index, bytes);
    }
  }
  slots_.clear();
}

void BlockStreamer::emit(ResidencyEventKind kind, std::int64_t index,
                         std::size_t bytes) const noexcept {
  if (options_.observer) {
    options_.observer->emit(kind, options_.group, index, bytes, options_.home);
  }
}

std::int64_t BlockStreamer::claim_next_locked() {
  const std::int64_t sequence = next_load_++;
  ++on_device_;
  Slot slot;
  slot.sequence = sequence;
  slots_.push_back(std::move(slot));
  return sequence;
}

BlockStreamer::Slot* BlockStreamer::find_slot_locked(std::int64_t sequence) {
  for (Slot& slot : slots_) {
    if (slot.sequence == sequence) {
      return &slot;
    }
  }
  return nullptr;
}

void BlockStreamer::load_into_slot(std::unique_lock<std::mutex>& lock, std::int64_t sequence) {
  const std::int64_t index = sequence % options_.block_count;
  lock.unlock();
  LoadedBlock block;
  std::exception_ptr error;
  emit(ResidencyEventKind::onload_start, index, 0);
  try {
    block = load_(index);
  } catch (...) {
    error = std::current_exception();
  }
  if (!error) {
    emit(ResidencyEventKind::onload_end, index, block.bytes);
  }
  lock.lock();
  Slot* slot = find_slot_locked(sequence);
  slot->block = std::move(block);
  slot->error = error;
  slot->ready = true;
  if (error && !failure_) {
    failure_ = error;
    failed_sequence_ = sequence;
  }
  lock.unlock();
  changed_.notify_all();
  lock.lock();
}

void BlockStreamer::run_worker() {
  // The consumer's kernels use every core. This thread's oneDNN reorders and OpenMP loops run
  // on one core, so loading ahead takes one core's share instead of doubling the thread count.
  omp_set_num_threads(1);
  std::unique_lock lock(mutex_);
  while (true) {
    changed_.wait(lock, [&] {
      return stopping_ || failure_ ||
             (on_device_ < options_.kept_blocks && next_load_ < acquisition_limit_);
    });
    if (stopping_ || failure_) {
      return;
    }
    load_into_slot(lock, claim_next_locked());
  }
}

LoadedBlock BlockStreamer::acquire(std::int64_t index) {
  std::unique_lock lock(mutex_);
  const std::int64_t sequence = next_acquire_;
  const std::int64_t expected = sequence % options_.block_count;
  if (index != expected) {
    throw std::logic_error(
        fmt::format("block streamer for {}: block {} was requested, but the blocks stream in "
                    "order and block {} is next",
                    options_.group, index, expected));
  }
  if (sequence >= acquisition_limit_) {
    throw std::logic_error(fmt::format(
        "block streamer for {}: block {} was requested, but all {} blocks the stream was "
        "limited to were handed out",
        options_.group, index, acquisition_limit_));
  }
  if (!worker_.joinable()) {
    // Synchronous: load this block and, like the worker, the ones after it up to kept_blocks.
    while (!failure_ && on_device_ < options_.kept_blocks &&
           next_load_ < sequence + options_.kept_blocks && next_load_ < acquisition_limit_) {
      load_into_slot(lock, claim_next_locked());
    }
  }

  changed_.wait(lock, [&] {
    const Slot* slot = find_slot_locked(sequence);
    return (slot != nullptr && slot->ready) || (failure_ && failed_sequence_ <= sequence);
  });
  Slot* slot = find_slot_locked(sequence);
  if (slot == nullptr || slot->error) {
    // This block, or one before it that was never handed out, failed to load.
    if (slot != nullptr) {
      slots_.pop_front();
      --on_device_;
    }
    std::rethrow_exception(failure_);
  }

  LoadedBlock block = std::move(slot->block);
  slots_.pop_front();
  ++next_acquire_;
  ++handed_out_;
  if (!worker_.joinable() && options_.kept_blocks > 1 && options_.load_workspace_bytes > 0 &&
      dry_run_active()) {
    dry_workspace_ = current_allocator(Device::cpu()).allocate(options_.load_workspace_bytes);
  }
  return block;
}

void BlockStreamer::limit_acquisitions(std::int64_t count) {
  if (count < 1) {
    throw std::invalid_argument(
        fmt::format("block streamer for {}: the acquisition limit must be at least 1, got {}",
                    options_.group, count));
  }
  std::lock_guard lock(mutex_);
  acquisition_limit_ = count;
}

void BlockStreamer::release(std::int64_t index, std::size_t bytes) noexcept {
  if (dry_workspace_.size > 0) {
    current_allocator(Device::cpu()).deallocate(dry_workspace_);
    dry_workspace_ = Allocation();
  }
  emit(ResidencyEventKind::offload, index, bytes);
  {
    std::lock_guard lock(mutex_);
    --on_device_;
    --handed_out_;
  }
  changed_.notify_all();
}

}  // namespace ethereal
