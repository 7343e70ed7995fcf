// Residency: when a group of weights is on the device, and the handles that bring it there.
//
// A group is a model component (text encoder, transformer, VAE) or one block of a component.
// Each group has a home tier where it lives while it is not needed: on the CPU backend, the
// memory-mapped checkpoint (storage) or a cache file. Bringing a group onto the device
// ("onload") allocates its tensors from the device's current allocator and fills them;
// releasing it ("offload") frees them. Both are reported as ResidencyEvents, so tests and the
// memory manager's event log can see every transfer.
//
// Ownership is RAII: a ResidentHandle keeps its group on the device and releases it when the
// handle is destroyed or release() is called, so an exception anywhere in a stage still
// releases what the stage loaded.
//
// Two mechanisms use the handles:
//   - ComponentResidency<T>: one component, either loaded once and kept (resident) or loaded
//     for each stage that uses it and released when the stage's handle goes
//     (model_offload). Releasing an offloaded component empties the allocator's cache, so the
//     freed bytes go back to the system and the process's resident memory falls.
//   - BlockStreamer: the blocks of one component in a fixed cyclic order 0, 1, ..., N-1, 0, ...
//     (sequential_offload). At most kept_blocks blocks are on the device at once, counting the
//     one the caller holds. A background worker thread loads the next blocks while the caller
//     computes with the current one (double buffering with kept_blocks = 2). A failure in the
//     worker is stored with the block it was loading and rethrown by acquire() for that block.
//     A failure on a block that is never acquired is logged when the streamer is destroyed.
//     A caller that knows how many blocks it will take sets limit_acquisitions(), and the
//     worker then loads nothing past the last of them. So the number of loads and allocations
//     is the same in every run, whatever the threads' timing.
//
// Dry run: when the current allocator is in dry-run mode the streamer starts no thread.
// acquire() then loads synchronously, filling ahead to kept_blocks exactly as far as the worker
// may get, and holds the loader's workspace (its read buffer) during each block's compute. The
// dry-run planner so counts, in a deterministic order, the most a real run can hold at once:
// every kept block plus a load in progress.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "runtime/allocator.h"

namespace ethereal {

// Storage tier of a group's bytes. On the CPU backend the device is process memory, so host
// and pinned memory are unused there. The CUDA backend counts them with allocators of their
// own.
enum class MemoryTier : std::uint8_t { device, host, pinned, storage };

// "device", "host", "pinned", "storage".
std::string_view memory_tier_name(MemoryTier tier);

enum class ResidencyEventKind : std::uint8_t {
  onload_start,   // a group starts moving onto the device
  onload_end,     // the group is on the device; bytes is its size there
  offload,        // the group left the device; its bytes were freed
  compute_start,  // a block's computation starts
  compute_end,    // a block's computation ended
};

// "onload_start", "onload_end", "offload", "compute_start", "compute_end".
std::string_view residency_event_kind_name(ResidencyEventKind kind);

struct ResidencyEvent {
  ResidencyEventKind kind = ResidencyEventKind::onload_start;
  // A component ("text_encoder", "text_encoder_vision", "transformer", "vae") or the group of
  // a block ("transformer_block", "text_encoder_layer").
  std::string group;
  // Block index, or -1 for a whole component.
  std::int64_t index = -1;
  // Device bytes of the group, on onload_end and offload; 0 on the other kinds.
  std::size_t bytes = 0;
  // Where the group lives while it is not on the device.
  MemoryTier home = MemoryTier::storage;
  std::chrono::steady_clock::time_point time;
};

using ResidencyEventSink = std::function<void(const ResidencyEvent&)>;

// Stamps events with the current time and passes them to a sink. emit() runs the sink on the
// calling thread, which for block onloads is the streaming worker, so the sink must be
// thread-safe. An exception from the sink is logged and dropped: observing must not change
// what is loaded.
class ResidencyObserver {
 public:
  explicit ResidencyObserver(ResidencyEventSink sink = {});

  void emit(ResidencyEventKind kind, std::string_view group, std::int64_t index, std::size_t bytes,
            MemoryTier home) const noexcept;

 private:
  ResidencyEventSink sink_;
};

// Keeps one group of weights on the device until it is released. Move-only. The release
// action runs once, after the handle has dropped its reference to the weights, so the bytes
// are already freed when the offload event is reported (unless someone else still shares
// the weights, as for a resident component).
template <typename T>
class ResidentHandle {
 public:
  ResidentHandle() = default;
  ResidentHandle(std::shared_ptr<const T> value, std::function<void()> on_release)
      : value_(std::move(value)), on_release_(std::move(on_release)) {}
  ~ResidentHandle() { release(); }

  ResidentHandle(ResidentHandle&& other) noexcept
      : value_(std::move(other.value_)), on_release_(std::exchange(other.on_release_, {})) {}
  ResidentHandle& operator=(ResidentHandle&& other) noexcept {
    if (this != &other) {
      release();
      value_ = std::move(other.value_);
      on_release_ = std::exchange(other.on_release_, {});
    }
    return *this;
  }
  ResidentHandle(const ResidentHandle&) = delete;
  ResidentHandle& operator=(const ResidentHandle&) = delete;

  const T& operator*() const { return *value_; }
  const T* operator->() const { return value_.get(); }
  const T* get() const { return value_.get(); }
  explicit operator bool() const { return value_ != nullptr; }

  // Drops the weights and runs the release action; does nothing on an empty handle.
  void release() noexcept {
    value_.reset();
    if (auto on_release = std::exchange(on_release_, {})) {
      on_release();
    }
  }

 private:
  std::shared_ptr<const T> value_;
  std::function<void()> on_release_;
};

// Bytes currently allocated by the current CPU allocator (for measuring what a load added).
std::size_t current_allocated_bytes();

// One model component and its placement: kept loaded for the pipeline's lifetime, or loaded
// by each acquire() and released with the handle it returns. Not thread-safe; a component
// that is not kept must have at most one handle at a time (each acquire() loads a fresh
// copy).
template <typename T>
class ComponentResidency {
 public:
  using Loader = std::function<T()>;

  // `keep_loaded` loads the component now and keeps it until this object is destroyed.
  ComponentResidency(std::string group, Loader load, bool keep_loaded,
                     std::shared_ptr<const ResidencyObserver> observer)
      : group_(std::move(group)), load_(std::move(load)), observer_(std::move(observer)) {
    if (keep_loaded) {
      kept_ = load_with_events().first;
    }
  }

  // The component on the device: the kept copy, or a new one released with the handle.
  ResidentHandle<T> acquire() const {
    if (kept_) {
      return ResidentHandle<T>(kept_, {});
    }
    auto [value, bytes] = load_with_events();
    return ResidentHandle<T>(std::move(value), [this, bytes = bytes] { offload(bytes); });
  }

  bool keeps_loaded() const { return kept_ != nullptr; }
  const std::string& group() const { return group_; }

 private:
  std::pair<std::shared_ptr<const T>, std::size_t> load_with_events() const {
    emit(ResidencyEventKind::onload_start, 0);
    const std::size_t before = current_allocated_bytes();
    auto value = std::make_shared<const T>(load_());
    const std::size_t after = current_allocated_bytes();
    const std::size_t bytes = after > before ? after - before : 0;
    emit(ResidencyEventKind::onload_end, bytes);
    return {std::move(value), bytes};
  }

  void offload(std::size_t bytes) const noexcept {
    current_allocator(Device::cpu()).empty_cache();
    emit(ResidencyEventKind::offload, bytes);
  }

  void emit(ResidencyEventKind kind, std::size_t bytes) const noexcept {
    if (observer_) {
      observer_->emit(kind, group_, -1, bytes, MemoryTier::storage);
    }
  }

  std::string group_;
  Loader load_;
  std::shared_ptr<const ResidencyObserver> observer_;
  std::shared_ptr<const T> kept_;
};

// A block as loaded by a BlockStreamer's load function: the weights (type-erased; the typed
// wrapper TypedBlockStreamer restores the type) and their device bytes.
struct LoadedBlock {
  std::shared_ptr<const void> value;
  std::size_t bytes = 0;
};

struct BlockStreamOptions {
  // Group name in events, for example "transformer_block".
  std::string group = "block";
  // Blocks per pass: acquire() takes 0, 1, ..., block_count - 1, then 0 again.
  std::int64_t block_count = 0;
  // Most blocks on the device at once, counting the one the caller holds; at least 1, and
  // capped at block_count. With 1 nothing is prefetched and each block loads inside acquire().
  int kept_blocks = 2;
  // Loads ahead on a worker thread. False (and always in a dry run) loads inside acquire(),
  // filling ahead as far as the worker could.
  bool background = true;
  MemoryTier home = MemoryTier::storage;
  std::shared_ptr<const ResidencyObserver> observer;
  // Most bytes a load in progress allocates besides the block itself (read buffers). In a real
  // run a load ahead may hold them at any moment of the caller's compute, so a dry run with
  // kept_blocks > 1 allocates this much while each block is handed out.
  std::size_t load_workspace_bytes = 0;
};

// Streams the blocks of one component through the device; see the note at the top of this
// file. One consumer thread calls acquire(); every handle it returns must be released before
// the streamer is destroyed.
class BlockStreamer {
 public:
  // Loads block `index` into memory from the current allocator. Called on the worker thread
  // (or the consumer's in synchronous mode), one call at a time.
  using LoadFunction = std::function<LoadedBlock(std::int64_t index)>;

  // Throws std::invalid_argument for block_count < 1 or kept_blocks < 1. Starts the worker.
  BlockStreamer(BlockStreamOptions options, LoadFunction load);
  // Stops the worker after the load it is running, joins it and releases the blocks loaded
  // ahead. A worker failure that no acquire() reported is logged here.
  ~BlockStreamer();

  BlockStreamer(const BlockStreamer&) = delete;
  BlockStreamer& operator=(const BlockStreamer&) = delete;

  // Waits for block `index` and hands its weights over. The caller must drop every reference
  // to them and then call release(index, bytes), which lets the worker load the next block;
  // TypedBlockStreamer::acquire wraps the pair in a ResidentHandle. `index` must be the next
  // in cyclic order, else std::logic_error. Rethrows the exception of a failed load of this
  // block. After a failed load nothing more is loaded, and every later acquire() rethrows it.
  LoadedBlock acquire(std::int64_t index);
  // Reports block `index` (of `bytes` device bytes) as released.
  void release(std::int64_t index, std::size_t bytes) noexcept;
  // Hands out at most `count` blocks in all and loads none past the last of them. Call it before
  // the first acquire(). Without it the stream never ends, so the worker loads up to
  // kept_blocks - 1 blocks ahead that no pass uses. An acquire() past the limit throws
  // std::logic_error. Throws std::invalid_argument for count < 1.
  void limit_acquisitions(std::int64_t count);

  bool runs_in_background() const { return worker_.joinable(); }
  const BlockStreamOptions& options() const { return options_; }

 private:
  struct Slot {
    std::int64_t sequence = 0;
    LoadedBlock block;
    std::exception_ptr error;
    bool ready = false;
  };

  void run_worker();
  // Claims the next sequence number and a slot for it; requires the lock.
  std::int64_t claim_next_locked();
  // Loads the block of `sequence` (unlocked) and publishes it in its slot.
  void load_into_slot(std::unique_lock<std::mutex>& lock, std::int64_t sequence);
  Slot* find_slot_locked(std::int64_t sequence);
  void emit(ResidencyEventKind kind, std::int64_t index, std::size_t bytes) const noexcept;

  BlockStreamOptions options_;
  LoadFunction load_;

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Slot> slots_;         // loading or loaded, not yet handed out, by sequence
  int on_device_ = 0;              // blocks loading, loaded or handed out
  std::int64_t next_load_ = 0;     // sequence number of the next block to load
  std::int64_t next_acquire_ = 0;  // sequence number acquire() hands out next
  // Sequence numbers from here on are neither loaded nor handed out.
  std::int64_t acquisition_limit_ = std::numeric_limits<std::int64_t>::max();
  int handed_out_ = 0;
  bool stopping_ = false;
  std::exception_ptr failure_;  // the first failed load; nothing is loaded after it
  std::int64_t failed_sequence_ = -1;
  Allocation dry_workspace_;  // held while a block is handed out in a dry run
  std::thread worker_;
};

// BlockStreamer for blocks of type Block.
template <typename Block>
class TypedBlockStreamer {
 public:
  using Loader = std::function<Block(std::int64_t index)>;
  using ByteCounter = std::function<std::size_t(const Block&)>;

  TypedBlockStreamer(BlockStreamOptions options, Loader load, ByteCounter bytes_of)
      : core_(std::move(options),
              [load = std::move(load), bytes_of = std::move(bytes_of)](std::int64_t index) {
                auto block = std::make_shared<const Block>(load(index));
                const std::size_t bytes = bytes_of(*block);
                return LoadedBlock{std::move(block), bytes};
              }) {}

  // The next block in cyclic order, on the device until the handle is released.
  ResidentHandle<Block> acquire(std::int64_t index) {
    LoadedBlock loaded = core_.acquire(index);
    auto value = std::static_pointer_cast<const Block>(std::move(loaded.value));
    return ResidentHandle<Block>(
        std::move(value), [this, index, bytes = loaded.bytes] { core_.release(index, bytes); });
  }

  // See BlockStreamer::limit_acquisitions.
  void limit_acquisitions(std::int64_t count) { core_.limit_acquisitions(count); }

  bool runs_in_background() const { return core_.runs_in_background(); }

 private:
  BlockStreamer core_;
};

}  // namespace ethereal
