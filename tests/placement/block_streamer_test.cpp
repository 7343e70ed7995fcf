#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "placement_test_support.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "runtime/residency.h"
#include "runtime/tensor.h"

namespace ethereal {
namespace {

using placement_test::EventRecorder;
using placement_test::max_on_device;
using std::chrono::milliseconds;

constexpr std::int64_t kBlockElements = 256 * 1024;  // 1 MiB of f32 per block
constexpr milliseconds kPatience{30000};

bool is(const ResidencyEvent& event, ResidencyEventKind kind, std::int64_t index) {
  return event.kind == kind && event.index == index;
}

// A block whose every element is its index, from the current allocator.
Tensor make_block(std::int64_t index) {
  Tensor block = Tensor::empty({kBlockElements}, DType::f32);
  if (!block.is_dry()) {
    float* values = block.data_as<float>();
    for (std::int64_t i = 0; i < kBlockElements; ++i) {
      values[i] = static_cast<float>(index);
    }
  }
  return block;
}

BlockStreamOptions stream_options(std::int64_t blocks, int kept, EventRecorder& recorder) {
  BlockStreamOptions options;
  options.group = "test_block";
  options.block_count = blocks;
  options.kept_blocks = kept;
  options.observer = std::make_shared<const ResidencyObserver>(recorder.sink());
  return options;
}

std::size_t tensor_bytes(const Tensor& tensor) {
  return tensor.nbytes();
}

TEST(BlockStreamer, StreamsBlocksInCyclicOrder) {
  EventRecorder recorder;
  TypedBlockStreamer<Tensor> streamer(stream_options(3, 2, recorder), make_block, tensor_bytes);
  EXPECT_TRUE(streamer.runs_in_background());
  for (int pass = 0; pass < 2; ++pass) {
    for (std::int64_t index = 0; index < 3; ++index) {
      const ResidentHandle<Tensor> block = streamer.acquire(index);
      ASSERT_TRUE(block);
      EXPECT_EQ(block->to_floats()[0], static_cast<float>(index));
    }
  }
}

TEST(BlockStreamer, KeepsAtMostKeptBlocksOnDevice) {
  for (int kept : {1, 2, 3}) {
    EventRecorder recorder;
    CpuCachingAllocator allocator;
    const ScopedAllocator scope(allocator);
    {
      TypedBlockStreamer<Tensor> streamer(stream_options(5, kept, recorder), make_block,
                                          tensor_bytes);
      for (int pass = 0; pass < 2; ++pass) {
        for (std::int64_t index = 0; index < 5; ++index) {
          const ResidentHandle<Tensor> block = streamer.acquire(index);
        }
      }
    }
    const std::int64_t block_bytes =
        static_cast<std::int64_t>(CpuCachingAllocator::round_size(kBlockElements * 4));
    EXPECT_LE(max_on_device(recorder.events(), "test_block"), kept) << "kept_blocks " << kept;
    EXPECT_LE(allocator.stats().allocated_bytes.peak, kept * block_bytes) << "kept " << kept;
    EXPECT_EQ(allocator.stats().allocated_bytes.current, 0) << "kept " << kept;
  }
}

// Two passes over three blocks with three kept: without the limit the worker would load up to
// two blocks of a third pass. With it, the loads are exactly the six blocks handed out.
TEST(BlockStreamer, LimitStopsLoadingAfterLastBlock) {
  for (const bool background : {true, false}) {
    EventRecorder recorder;
    BlockStreamOptions options = stream_options(3, 3, recorder);
    options.background = background;
    {
      TypedBlockStreamer<Tensor> streamer(std::move(options), make_block, tensor_bytes);
      streamer.limit_acquisitions(6);
      for (std::int64_t step = 0; step < 6; ++step) {
        const ResidentHandle<Tensor> block = streamer.acquire(step % 3);
      }
      EXPECT_THROW(streamer.acquire(0), std::logic_error) << "background " << background;
    }
    int onloads = 0;
    for (const ResidencyEvent& event : recorder.events()) {
      onloads += event.kind == ResidencyEventKind::onload_start ? 1 : 0;
    }
    EXPECT_EQ(onloads, 6) << "background " << background;
  }
}

TEST(BlockStreamer, CapsKeptBlocksAtBlockCount) {
  EventRecorder recorder;
  {
    TypedBlockStreamer<Tensor> streamer(stream_options(3, 8, recorder), make_block, tensor_bytes);
    for (std::int64_t step = 0; step < 9; ++step) {
      const ResidentHandle<Tensor> block = streamer.acquire(step % 3);
    }
  }
  EXPECT_LE(max_on_device(recorder.events(), "test_block"), 3);
}

// The consumer does not finish block i's compute until block i+1's load has started: a
// streamer that loaded only inside acquire() would never get there and the wait would time out.
TEST(BlockStreamer, NextLoadStartsBeforeComputeEnds) {
  EventRecorder recorder;
  TypedBlockStreamer<Tensor> streamer(stream_options(4, 2, recorder), make_block, tensor_bytes);
  for (std::int64_t step = 0; step < 8; ++step) {
    const std::int64_t index = step % 4;
    const std::int64_t next = (index + 1) % 4;
    const ResidentHandle<Tensor> block = streamer.acquire(index);
    const std::size_t loads_seen = recorder.events().size();
    const bool next_started = recorder.wait_for(
        [&](const ResidencyEvent& event) {
          return is(event, ResidencyEventKind::onload_start, next);
        },
        kPatience);
    EXPECT_TRUE(next_started) << "block " << next << " did not start loading while block " << index
                              << " was held (" << loads_seen << " events so far)";
  }
}

TEST(BlockStreamer, OffloadFollowsRelease) {
  EventRecorder recorder;
  {
    TypedBlockStreamer<Tensor> streamer(stream_options(2, 1, recorder), make_block, tensor_bytes);
    ResidentHandle<Tensor> block = streamer.acquire(0);
    block.release();
    const std::vector<ResidencyEvent> events = recorder.events();
    ASSERT_EQ(events.size(), 3u);
    EXPECT_TRUE(is(events[0], ResidencyEventKind::onload_start, 0));
    EXPECT_TRUE(is(events[1], ResidencyEventKind::onload_end, 0));
    EXPECT_TRUE(is(events[2], ResidencyEventKind::offload, 0));
    EXPECT_EQ(events[1].bytes, kBlockElements * 4u);
    EXPECT_EQ(events[2].bytes, kBlockElements * 4u);
  }
}

TEST(BlockStreamer, WorkerFailureSurfacesOnAcquire) {
  EventRecorder recorder;
  CpuCachingAllocator allocator;
  const ScopedAllocator scope(allocator);
  {
    auto load = [](std::int64_t index) {
      if (index == 2) {
        throw IoError("blocks.safetensors: tensor \"block.2\" could not be read");
      }
      return make_block(index);
    };
    TypedBlockStreamer<Tensor> streamer(stream_options(4, 2, recorder), load, tensor_bytes);
    ASSERT_TRUE(streamer.runs_in_background());
    { const ResidentHandle<Tensor> block = streamer.acquire(0); }
    { const ResidentHandle<Tensor> block = streamer.acquire(1); }
    try {
      (void)streamer.acquire(2);
      FAIL() << "the failed load of block 2 was not reported";
    } catch (const IoError& error) {
      EXPECT_NE(std::string(error.what()).find("block.2"), std::string::npos) << error.what();
    }
    // Nothing loads after a failure, and asking again reports the same error.
    EXPECT_THROW((void)streamer.acquire(2), IoError);
  }
  EXPECT_EQ(allocator.stats().allocated_bytes.current, 0);
}

TEST(BlockStreamer, OutOfMemoryInWorkerKeepsItsType) {
  EventRecorder recorder;
  CpuCachingAllocator allocator;
  const ScopedAllocator scope(allocator);
  // Blocks allocate once each and nothing else allocates, so the third allocation is block 2's,
  // made on the worker thread.
  allocator.fail_allocation_after(3);
  {
    TypedBlockStreamer<Tensor> streamer(stream_options(3, 2, recorder), make_block, tensor_bytes);
    { const ResidentHandle<Tensor> block = streamer.acquire(0); }
    { const ResidentHandle<Tensor> block = streamer.acquire(1); }
    EXPECT_THROW((void)streamer.acquire(2), OutOfMemoryError);
  }
  EXPECT_EQ(allocator.stats().allocated_bytes.current, 0);
}

TEST(BlockStreamer, RejectsOutOfOrderAcquire) {
  EventRecorder recorder;
  TypedBlockStreamer<Tensor> streamer(stream_options(3, 2, recorder), make_block, tensor_bytes);
  EXPECT_THROW((void)streamer.acquire(1), std::logic_error);
  const ResidentHandle<Tensor> block = streamer.acquire(0);
  EXPECT_TRUE(block);
}

TEST(BlockStreamer, RejectsInvalidOptions) {
  EventRecorder recorder;
  EXPECT_THROW(TypedBlockStreamer<Tensor>(stream_options(0, 2, recorder), make_block, tensor_bytes),
               std::invalid_argument);
  EXPECT_THROW(TypedBlockStreamer<Tensor>(stream_options(3, 0, recorder), make_block, tensor_bytes),
               std::invalid_argument);
}

// A dry run starts no thread and fills ahead to kept_blocks inside acquire(), so the order of
// allocations (and the planner's peak) is fixed: two blocks are on the device during block 0.
TEST(BlockStreamer, DryRunLoadsAheadSynchronously) {
  EventRecorder recorder;
  CpuCachingAllocator dry(CpuCachingAllocator::Options{.dry_run = true});
  const ScopedAllocator scope(dry);
  {
    TypedBlockStreamer<Tensor> streamer(stream_options(3, 2, recorder), make_block, tensor_bytes);
    EXPECT_FALSE(streamer.runs_in_background());
    EXPECT_TRUE(recorder.events().empty());
    const ResidentHandle<Tensor> block = streamer.acquire(0);
    const std::vector<ResidencyEvent> events = recorder.events();
    ASSERT_EQ(events.size(), 4u);
    EXPECT_TRUE(is(events[0], ResidencyEventKind::onload_start, 0));
    EXPECT_TRUE(is(events[1], ResidencyEventKind::onload_end, 0));
    EXPECT_TRUE(is(events[2], ResidencyEventKind::onload_start, 1));
    EXPECT_TRUE(is(events[3], ResidencyEventKind::onload_end, 1));
    const auto block_bytes =
        static_cast<std::int64_t>(CpuCachingAllocator::round_size(kBlockElements * 4));
    EXPECT_EQ(dry.stats().allocated_bytes.current, 2 * block_bytes);
  }
  EXPECT_EQ(dry.stats().allocated_bytes.current, 0);
}

TEST(BlockStreamer, DestructionReleasesBlocksLoadedAhead) {
  EventRecorder recorder;
  CpuCachingAllocator allocator;
  const ScopedAllocator scope(allocator);
  {
    TypedBlockStreamer<Tensor> streamer(stream_options(4, 3, recorder), make_block, tensor_bytes);
    const ResidentHandle<Tensor> block = streamer.acquire(0);
  }
  const std::vector<ResidencyEvent> events = recorder.events();
  int onloads = 0;
  int offloads = 0;
  for (const ResidencyEvent& event : events) {
    onloads += event.kind == ResidencyEventKind::onload_end ? 1 : 0;
    offloads += event.kind == ResidencyEventKind::offload ? 1 : 0;
  }
  EXPECT_GE(onloads, 1);
  EXPECT_EQ(onloads, offloads);
  EXPECT_EQ(allocator.stats().allocated_bytes.current, 0);
}

TEST(ComponentResidency, OffloadedComponentLoadsPerAcquire) {
  EventRecorder recorder;
  CpuCachingAllocator allocator;
  const ScopedAllocator scope(allocator);
  int loads = 0;
  const ComponentResidency<Tensor> component(
      "vae",
      [&] {
        ++loads;
        return make_block(7);
      },
      /*keep_loaded=*/false, std::make_shared<const ResidencyObserver>(recorder.sink()));
  EXPECT_EQ(loads, 0);
  for (int stage = 0; stage < 2; ++stage) {
    const ResidentHandle<Tensor> handle = component.acquire();
    EXPECT_EQ(handle->to_floats()[0], 7.0f);
  }
  EXPECT_EQ(loads, 2);
  EXPECT_EQ(allocator.stats().allocated_bytes.current, 0);
  // Releasing an offloaded component empties the cache, so nothing stays reserved.
  EXPECT_EQ(allocator.stats().reserved_bytes.current, 0);
  const std::vector<ResidencyEvent> events = recorder.events();
  ASSERT_EQ(events.size(), 6u);
  EXPECT_EQ(events[1].kind, ResidencyEventKind::onload_end);
  EXPECT_EQ(events[1].bytes, CpuCachingAllocator::round_size(kBlockElements * 4));
  EXPECT_EQ(events[2].kind, ResidencyEventKind::offload);
  EXPECT_EQ(events[2].group, "vae");
  EXPECT_EQ(events[2].index, -1);
}

TEST(ComponentResidency, KeptComponentLoadsOnce) {
  EventRecorder recorder;
  int loads = 0;
  const ComponentResidency<Tensor> component(
      "text_encoder",
      [&] {
        ++loads;
        return make_block(3);
      },
      /*keep_loaded=*/true, std::make_shared<const ResidencyObserver>(recorder.sink()));
  EXPECT_EQ(loads, 1);
  { const ResidentHandle<Tensor> handle = component.acquire(); }
  { const ResidentHandle<Tensor> handle = component.acquire(); }
  EXPECT_EQ(loads, 1);
  EXPECT_EQ(recorder.events().size(), 2u);  // onload_start and onload_end, no offload
}

}  // namespace
}  // namespace ethereal
