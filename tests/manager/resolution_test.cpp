// MemoryManager::edit when no strategy fits the requested output size: it computes the image at
// a lower resolution and upscales it, or fails with advice when even that does not fit.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "io/resample.h"
#include "manager/manager_test_support.h"
#include "memory/config.h"
#include "memory/events.h"
#include "memory/manager.h"
#include "memory/planner.h"
#include "runtime/allocator.h"

namespace ethereal::manager_test {
namespace {

// 512x512 halves to 352x352, with sides rounded down to multiples of 16. The next halving
// would take a side below 256, so 352x352 is the only lower resolution tried.
constexpr ImageSize kRequested{512, 512};
constexpr ImageSize kReduced{352, 352};
// The references' VAE copies shrink with the output: 1024^2 pixels scaled by 352^2 / 512^2.
constexpr double kReducedReferencePixels = 1024.0 * 1024.0 * 352 * 352 / (512.0 * 512.0);

memory::ManagedEditRequest edit_request() {
  return small_edit_request(kRequested, 5);
}

memory::MemoryConfig config_with_reduction() {
  return performance_config(/*allow_resolution_reduction=*/true);
}

// The allocated peak of `strategy` with reduced working memory at `size`, with references of
// `reference_pixels`: by the capacity tests, the strategy fits in this many bytes.
std::uint64_t reduced_need(const std::string& strategy, ImageSize size, double reference_pixels) {
  const memory::Planner planner(tiny_model(), PipelineLoadOptions{});
  const memory::LoadStrategy reduced =
      memory::with_reduced_working_memory(memory::parse_strategy(strategy));
  memory::PlanRequest request = small_plan_request(size.width, size.height);
  request.reference_pixels = reference_pixels;
  return planner.plan(reduced, request, unlimited_budget()).peak_allocated_bytes;
}

std::uint64_t need_at_requested_size(const std::string& strategy) {
  return reduced_need(strategy, kRequested, 1024.0 * 1024.0);
}

std::uint64_t need_at_reduced_size(const std::string& strategy) {
  return reduced_need(strategy, kReduced, kReducedReferencePixels);
}

std::vector<std::string> attempt_lines(const std::vector<memory::Attempt>& attempts) {
  std::vector<std::string> lines;
  for (const memory::Attempt& attempt : attempts) {
    std::string line = attempt.strategy + " " + attempt.phase + " " + attempt.outcome;
    if (attempt.reduced_working_memory) {
      line += " reduced";
    }
    if (attempt.size) {
      line +=
          " at " + std::to_string(attempt.size->width) + "x" + std::to_string(attempt.size->height);
    }
    lines.push_back(line);
  }
  return lines;
}

// A limit that fits sequential_offload at 352x352 but no strategy at 512x512. The limit is the
// allocator's capacity, so the failing plans at 512x512 are exact and nothing runs at that
// size. The edit runs at 352x352, with the references scaled alike, and is upscaled to 512x512.
TEST(ManagerResolution, ComputesAtLowerResolutionAndUpscales) {
  const std::uint64_t limit = need_at_reduced_size("sequential_offload");
  for (const std::string& name : {"fp16_full", "sequential_offload"}) {
    ASSERT_LT(limit, need_at_requested_size(name)) << name << " would fit at 512x512";
  }
  CpuCachingAllocator allocator({.capacity = limit});
  const ScopedAllocator scope(allocator);
  memory::EventLog events;
  memory::MemoryManager manager(config_with_reduction(), machine_with_limit(limit), &events);
  const std::vector<memory::LoadStrategy> candidates =
      manager.candidates({"fp16_full", "sequential_offload"});

  const memory::ManagedEditResult result =
      manager.edit(tiny_model(), edit_request(), PipelineLoadOptions{}, candidates);

  EXPECT_TRUE(result.resolution_reduced);
  EXPECT_EQ(result.requested_size, kRequested);
  EXPECT_EQ(result.computed_size, kReduced);
  EXPECT_EQ(result.result.image.width(), kRequested.width);
  EXPECT_EQ(result.result.image.height(), kRequested.height);
  ASSERT_FALSE(result.attempts.empty());
  EXPECT_EQ(attempt_lines(result.attempts).back(),
            "sequential_offload edit success reduced at 352x352")
      << ::testing::PrintToString(attempt_lines(result.attempts));
  for (const memory::Attempt& attempt : result.attempts) {
    EXPECT_TRUE(attempt.phase == "load" || attempt.size == kReduced)
        << "an edit ran at 512x512 although no plan fits there: " << attempt.strategy;
  }
  EXPECT_LE(allocator.stats().reserved_bytes.peak, static_cast<std::int64_t>(limit));

  EXPECT_EQ(resolution_reductions(events), (std::vector<std::string>{"512 -> 352"}));

  // The same edit run directly at 352x352 with the strategy and working memory that succeeded,
  // then upscaled with Lanczos, gives the same image.
  const memory::LoadStrategy sequential =
      memory::with_reduced_working_memory(memory::parse_strategy("sequential_offload"));
  EditRequest direct_request = edit_request().edit;
  direct_request.output_size = kReduced;
  direct_request.reference_pixels = kReducedReferencePixels;
  Image expected;
  {
    CpuCachingAllocator unlimited;
    const ScopedAllocator direct_scope(unlimited);
    const EditPipeline pipeline =
        EditPipeline::load(tiny_model(), sequential.load_options(PipelineLoadOptions{}));
    expected = pipeline.run(direct_request, memory::working_memory_options(sequential, {})).image;
  }
  expected = resize(expected, kRequested.width, kRequested.height, ResampleFilter::kLanczos);
  EXPECT_TRUE(result.result.image == expected)
      << "the image differs from a direct 352x352 run upscaled to 512x512";
}

// Below even the 352x352 need: MemoryExhaustedError, whose message gives the need at the
// requested size and at the smallest size tried.
TEST(ManagerResolution, ExhaustedMessageGivesNeedAtSmallestSize) {
  const std::uint64_t limit = need_at_reduced_size("sequential_offload") - (1u << 20);
  CpuCachingAllocator allocator({.capacity = limit});
  const ScopedAllocator scope(allocator);
  memory::MemoryManager manager(config_with_reduction(), machine_with_limit(limit));

  try {
    manager.edit(tiny_model(), edit_request(), PipelineLoadOptions{},
                 manager.candidates({"cpu_offload", "sequential_offload"}));
    FAIL() << "the edit fitted under a limit below every plan";
  } catch (const memory::MemoryExhaustedError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("at 512x512"), std::string::npos) << message;
    EXPECT_NE(message.find("At 352x352, the smallest size tried"), std::string::npos) << message;
    EXPECT_TRUE(error.attempts().empty()) << "no plan fits, so nothing should have run";
  }
  EXPECT_EQ(allocator.stats().allocated_bytes.current, 0);
}

}  // namespace
}  // namespace ethereal::manager_test
