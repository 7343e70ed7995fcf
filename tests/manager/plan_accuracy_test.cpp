// The planner's dry runs against real runs of the same code: peaks within 2%, and each
// strategy fits exactly when its plan predicts a fit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "manager/manager_test_support.h"
#include "memory/planner.h"
#include "memory/strategy.h"
#include "runtime/allocator.h"
#include "runtime/error.h"

namespace ethereal::manager_test {
namespace {

struct MeasuredRun {
  std::uint64_t peak_reserved_bytes = 0;
  std::uint64_t peak_allocated_bytes = 0;
  // Peak reserved bytes per stage, measured as the planner measures them: "load", then each
  // stage from the end of the previous one.
  std::map<std::string, std::uint64_t> stage_peak_bytes;
};

// Loads with `strategy` and runs the request that the plan ran, on `allocator` (installed
// for the duration); returns the peaks over load and edit.
MeasuredRun run_for_real(CpuCachingAllocator& allocator, const memory::LoadStrategy& strategy,
                         const memory::PlanRequest& request) {
  const ScopedAllocator scope(allocator);
  allocator.reset_peaks();
  MeasuredRun measured;
  const auto note_peaks = [&](const std::string& stage) {
    const AllocatorStats stats = allocator.stats();
    const auto reserved = static_cast<std::uint64_t>(stats.reserved_bytes.peak);
    const auto allocated = static_cast<std::uint64_t>(stats.allocated_bytes.peak);
    measured.stage_peak_bytes[stage] = std::max(measured.stage_peak_bytes[stage], reserved);
    measured.peak_reserved_bytes = std::max(measured.peak_reserved_bytes, reserved);
    measured.peak_allocated_bytes = std::max(measured.peak_allocated_bytes, allocated);
    allocator.reset_peaks();
  };
  {
    const EditPipeline pipeline =
        EditPipeline::load(tiny_model(), strategy.load_options(PipelineLoadOptions{}));
    note_peaks("load");
    pipeline.run(memory::plan_edit_request(request),
                 memory::working_memory_options(strategy, request.memory),
                 [&](const EditProgress& progress) { note_peaks(progress.stage); });
  }
  // Whatever the run allocated after its last stage ended still counts towards the peaks.
  note_peaks("after the last stage");
  measured.stage_peak_bytes.erase("after the last stage");
  return measured;
}

// Expects `measured` within 2% of `planned`, or equal when the plan is 0.
void expect_within_two_percent(std::uint64_t measured, std::uint64_t planned,
                               const std::string& what) {
  if (planned == 0) {
    EXPECT_EQ(measured, 0u) << what;
    return;
  }
  const double difference =
      (static_cast<double>(measured) - static_cast<double>(planned)) / static_cast<double>(planned);
  EXPECT_NEAR(difference, 0.0, 0.02)
      << what << ": planned " << planned << " bytes, measured " << measured << " bytes";
}

struct StrategyAndSize {
  std::string strategy;
  int width = 0;
  int height = 0;
};

void PrintTo(const StrategyAndSize& value, std::ostream* out) {
  *out << value.strategy << " at " << value.width << "x" << value.height;
}

std::string case_name(const ::testing::TestParamInfo<StrategyAndSize>& info) {
  return fmt::format("{}_{}x{}", info.param.strategy, info.param.width, info.param.height);
}

class PlanAccuracy : public ::testing::TestWithParam<StrategyAndSize> {};

TEST_P(PlanAccuracy, PeaksMatchRealRun) {
  const StrategyAndSize& param = GetParam();
  const memory::LoadStrategy strategy = memory::parse_strategy(param.strategy);
  const memory::PlanRequest request = small_plan_request(param.width, param.height);
  const memory::Planner planner(tiny_model(), PipelineLoadOptions{});
  const memory::StrategyPlan plan = planner.plan(strategy, request, unlimited_budget());

  CpuCachingAllocator allocator;
  const MeasuredRun measured = run_for_real(allocator, strategy, request);

  const std::uint64_t planned_reserved = plan.peak_bytes.at("device");
  RecordProperty("planned_reserved_bytes", std::to_string(planned_reserved));
  RecordProperty("measured_reserved_bytes", std::to_string(measured.peak_reserved_bytes));
  RecordProperty("planned_allocated_bytes", std::to_string(plan.peak_allocated_bytes));
  RecordProperty("measured_allocated_bytes", std::to_string(measured.peak_allocated_bytes));

  EXPECT_TRUE(plan.fits);
  EXPECT_EQ(plan.peak_bytes.at("host"), planned_reserved);
  expect_within_two_percent(measured.peak_reserved_bytes, planned_reserved, "reserved peak");
  expect_within_two_percent(measured.peak_allocated_bytes, plan.peak_allocated_bytes,
                            "allocated peak");
  ASSERT_EQ(measured.stage_peak_bytes.size(), plan.stage_peak_bytes.size());
  for (const auto& [stage, planned] : plan.stage_peak_bytes) {
    ASSERT_TRUE(measured.stage_peak_bytes.contains(stage)) << "stage " << stage;
    expect_within_two_percent(measured.stage_peak_bytes.at(stage), planned, "stage " + stage);
  }
}

std::vector<StrategyAndSize> accuracy_cases() {
  std::vector<StrategyAndSize> cases;
  for (const memory::LoadStrategy& strategy : memory::standard_strategies()) {
    for (const auto& [width, height] : {std::pair{256, 256}, {320, 192}, {512, 384}}) {
      cases.push_back({strategy.name, width, height});
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(StandardStrategies, PlanAccuracy, ::testing::ValuesIn(accuracy_cases()),
                         case_name);

// Whether a dry run of the load and edit completes under `capacity`.
bool dry_run_fits(const memory::LoadStrategy& strategy, const memory::PlanRequest& request,
                  std::uint64_t capacity) {
  CpuCachingAllocator dry({.dry_run = true, .capacity = capacity});
  const ScopedAllocator scope(dry);
  try {
    const EditPipeline pipeline =
        EditPipeline::load(tiny_model(), strategy.load_options(PipelineLoadOptions{}));
    pipeline.run(memory::plan_edit_request(request),
                 memory::working_memory_options(strategy, request.memory));
  } catch (const OutOfMemoryError&) {
    return false;
  }
  return true;
}

// Whether the real load and edit complete under `capacity`; OutOfMemoryError is the only
// failure expected.
bool real_run_fits(const memory::LoadStrategy& strategy, const memory::PlanRequest& request,
                   std::uint64_t capacity) {
  CpuCachingAllocator allocator({.capacity = capacity});
  try {
    run_for_real(allocator, strategy, request);
  } catch (const OutOfMemoryError&) {
    EXPECT_EQ(allocator.stats().allocated_bytes.current, 0) << "a failed run left blocks behind";
    return false;
  }
  return true;
}

memory::TierBudget budget_of(std::uint64_t bytes) {
  return {.device_bytes = bytes, .host_bytes = bytes, .device_is_host = true};
}

constexpr std::uint64_t kBlockGranularity = 512;  // every allocator block is a multiple

class PlanCapacity : public ::testing::TestWithParam<std::string> {};

// The smallest capacity that fits is found by bisection over dry runs. The plan must report a
// fit there and none one block below, and the real run must agree on both sides.
TEST_P(PlanCapacity, FitsExactlyAtPlannedNeed) {
  const memory::LoadStrategy strategy = memory::parse_strategy(GetParam());
  const memory::PlanRequest request = small_plan_request(256, 256);
  const memory::Planner planner(tiny_model(), PipelineLoadOptions{});
  const memory::StrategyPlan unlimited = planner.plan(strategy, request, unlimited_budget());
  const std::uint64_t reserved_peak = unlimited.peak_bytes.at("device");
  const std::uint64_t allocated_peak = unlimited.peak_allocated_bytes;
  ASSERT_LT(allocated_peak, reserved_peak);

  // The need lies a little below the allocated peak: blocks served from the cache may be up to
  // 1/8 larger than requested, and a capped run caches less.
  std::uint64_t low = allocated_peak - 256 * 1024;
  std::uint64_t high = allocated_peak;
  ASSERT_FALSE(dry_run_fits(strategy, request, low));
  ASSERT_TRUE(dry_run_fits(strategy, request, high));
  while (high - low > kBlockGranularity) {
    const std::uint64_t middle = (low + high) / 2 / kBlockGranularity * kBlockGranularity;
    (dry_run_fits(strategy, request, middle) ? high : low) = middle;
  }
  const std::uint64_t need = high;
  const std::uint64_t below = need - kBlockGranularity;
  RecordProperty("capacity_needed_bytes", std::to_string(need));

  const memory::StrategyPlan at_need = planner.plan(strategy, request, budget_of(need));
  EXPECT_TRUE(at_need.fits) << at_need.reason;
  EXPECT_TRUE(at_need.fit_by_capped_run);
  EXPECT_EQ(at_need.shortfall_bytes, 0u);
  EXPECT_TRUE(real_run_fits(strategy, request, need));

  const memory::StrategyPlan at_below = planner.plan(strategy, request, budget_of(below));
  EXPECT_FALSE(at_below.fits);
  EXPECT_GT(at_below.shortfall_bytes, 0u);
  EXPECT_NE(at_below.reason.find("more than the"), std::string::npos) << at_below.reason;
  EXPECT_FALSE(real_run_fits(strategy, request, below));

  // At the reserved peak the plan fits without a capped run, and the real run never flushes.
  const memory::StrategyPlan at_peak = planner.plan(strategy, request, budget_of(reserved_peak));
  EXPECT_TRUE(at_peak.fits);
  EXPECT_FALSE(at_peak.fit_by_capped_run);
  EXPECT_TRUE(real_run_fits(strategy, request, reserved_peak));
}

INSTANTIATE_TEST_SUITE_P(StandardStrategies, PlanCapacity,
                         ::testing::Values("fp16_full", "fp8_optimized", "nf4_quantized",
                                           "cpu_offload", "sequential_offload"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace ethereal::manager_test
