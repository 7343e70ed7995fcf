// MemoryManager::edit under memory pressure: out-of-memory recovery by retry and fallback,
// the fallback trigger at step boundaries, and adaptive selection from the history.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "manager/manager_test_support.h"
#include "memory/config.h"
#include "memory/events.h"
#include "memory/history.h"
#include "memory/manager.h"
#include "memory/planner.h"
#include "memory/profiler.h"
#include "runtime/allocator.h"
#include "runtime/residency.h"

namespace ethereal::manager_test {
namespace {

constexpr int kWidth = 256;
constexpr int kHeight = 256;

memory::ManagedEditRequest small_edit_request() {
  return manager_test::small_edit_request(ImageSize{kWidth, kHeight}, 3);
}

// No safety margin, no resolution reduction, ranking by the preference order.
memory::MemoryConfig test_config() {
  return performance_config(/*allow_resolution_reduction=*/false);
}

memory::LoadStrategy strategy_named(const std::string& name, bool reduced) {
  const memory::LoadStrategy strategy = memory::parse_strategy(name);
  return reduced ? memory::with_reduced_working_memory(strategy) : strategy;
}

// Allocated peak of an unlimited plan of `strategy` for the small request, with reduced working
// memory when asked.
std::uint64_t allocated_peak(const std::string& strategy, bool reduced = false) {
  const memory::Planner planner(tiny_model(), PipelineLoadOptions{});
  return planner
      .plan(strategy_named(strategy, reduced), small_plan_request(kWidth, kHeight),
            unlimited_budget())
      .peak_allocated_bytes;
}

// A capacity at which the plan of `strategy` for the small request fits, and so (by the
// PlanCapacity tests) the real run too. It starts at the allocated peak and adds the shortfall
// of each refused allocation until the plan fits: the capped run that decides a fit can need
// slightly more than the uncapped allocated peak.
std::uint64_t fitting_capacity(const std::string& strategy, bool reduced = false) {
  const memory::Planner planner(tiny_model(), PipelineLoadOptions{});
  const memory::LoadStrategy parsed = strategy_named(strategy, reduced);
  std::uint64_t capacity = allocated_peak(strategy, reduced);
  for (int attempt = 0; attempt < 8; ++attempt) {
    const memory::TierBudget budget{
        .device_bytes = capacity, .host_bytes = capacity, .device_is_host = true};
    const memory::StrategyPlan plan =
        planner.plan(parsed, small_plan_request(kWidth, kHeight), budget);
    if (plan.fits) {
      return capacity;
    }
    capacity += plan.shortfall_bytes;
  }
  ADD_FAILURE() << "no capacity found at which " << parsed.name << " fits";
  return capacity;
}

// The image of a direct load and run with `strategy` and `memory`, on a fresh unlimited
// allocator.
Image direct_run(const memory::LoadStrategy& strategy, const EditMemoryOptions& memory) {
  CpuCachingAllocator allocator;
  const ScopedAllocator scope(allocator);
  const EditPipeline pipeline =
      EditPipeline::load(tiny_model(), strategy.load_options(PipelineLoadOptions{}));
  return pipeline.run(small_edit_request().edit, memory).image;
}

// out_of_memory, retry, fallback and threshold events, each with the strategy it concerns.
std::vector<std::string> recovery_events(const memory::EventLog& log) {
  std::vector<std::string> lines;
  for (const memory::Event& event : log.events()) {
    const std::string type(memory::event_type_name(event.type));
    if (event.type == memory::EventType::out_of_memory || event.type == memory::EventType::retry) {
      lines.push_back(type + " " + event.fields.at("strategy").get<std::string>());
    } else if (event.type == memory::EventType::fallback) {
      lines.push_back(type + " " + event.fields.at("from").get<std::string>() + " -> " +
                      event.fields.at("to").get<std::string>());
    } else if (event.type == memory::EventType::threshold) {
      lines.push_back(type + " " + event.fields.at("level").get<std::string>());
    }
  }
  return lines;
}

std::vector<std::string> attempt_lines(const std::vector<memory::Attempt>& attempts) {
  std::vector<std::string> lines;
  for (const memory::Attempt& attempt : attempts) {
    lines.push_back(attempt.strategy + " " + attempt.phase + " " + attempt.outcome +
                    (attempt.reduced_working_memory ? " reduced" : ""));
  }
  return lines;
}

// A memory limit at which only the offload strategies fit, and only with reduced working
// memory. fp16_full, tried first on request, starts with reduced working memory (its closer
// plan), runs out, and the manager falls back to cpu_offload.
TEST(ManagerRecovery, FallsBackWhenPlanMisses) {
  const std::uint64_t capacity = fitting_capacity("cpu_offload", /*reduced=*/true);
  ASSERT_LT(capacity, fitting_capacity("fp16_full", /*reduced=*/true));
  CpuCachingAllocator allocator({.capacity = capacity});
  const ScopedAllocator scope(allocator);
  memory::EventLog events;
  memory::MemoryManager manager(test_config(), machine_with_limit(capacity), &events);
  manager.set_first_strategy("fp16_full");

  const memory::ManagedEditResult result =
      manager.edit(tiny_model(), small_edit_request(), PipelineLoadOptions{}, manager.candidates());

  EXPECT_EQ(result.recommended,
            (std::vector<std::string>{"fp16_full", "cpu_offload", "sequential_offload"}));
  EXPECT_EQ(result.strategy.name, "cpu_offload");
  EXPECT_EQ(
      attempt_lines(result.attempts),
      (std::vector<std::string>{"fp16_full load success", "fp16_full edit out_of_memory reduced",
                                "cpu_offload load success", "cpu_offload edit success reduced"}));
  EXPECT_EQ(
      recovery_events(events),
      (std::vector<std::string>{"out_of_memory fp16_full", "fallback fp16_full -> cpu_offload"}));

  const memory::LoadStrategy cpu_offload = memory::parse_strategy("cpu_offload");
  const EditMemoryOptions reduced =
      memory::working_memory_options(memory::with_reduced_working_memory(cpu_offload), {});
  EXPECT_TRUE(result.result.image == direct_run(cpu_offload, reduced))
      << "the image differs from a direct cpu_offload run with reduced working memory";
}

// The plans see a roomy machine, but the allocator has only what cpu_offload needs with reduced
// working memory: each strategy runs out, is retried with less working memory, and fp16_full
// then falls back.
TEST(ManagerRecovery, RetriesThenFallsBack) {
  const std::uint64_t capacity = fitting_capacity("cpu_offload", /*reduced=*/true);
  CpuCachingAllocator allocator({.capacity = capacity});
  const ScopedAllocator scope(allocator);
  memory::EventLog events;
  memory::MemoryManager manager(test_config(), machine_with_limit(64ull << 30), &events);
  manager.configure(0, 0, 0);

  const memory::ManagedEditResult result =
      manager.edit(tiny_model(), small_edit_request(), PipelineLoadOptions{},
                   manager.candidates({"fp16_full", "cpu_offload"}));

  EXPECT_EQ(result.strategy.name, "cpu_offload");
  EXPECT_EQ(attempt_lines(result.attempts),
            (std::vector<std::string>{"fp16_full load success", "fp16_full edit out_of_memory",
                                      "fp16_full edit out_of_memory reduced",
                                      "cpu_offload load success", "cpu_offload edit out_of_memory",
                                      "cpu_offload edit success reduced"}));
  EXPECT_EQ(
      recovery_events(events),
      (std::vector<std::string>{"out_of_memory fp16_full", "retry fp16_full",
                                "out_of_memory fp16_full", "fallback fp16_full -> cpu_offload",
                                "out_of_memory cpu_offload", "retry cpu_offload"}));

  const memory::LoadStrategy cpu_offload = memory::parse_strategy("cpu_offload");
  const EditMemoryOptions reduced =
      memory::working_memory_options(memory::with_reduced_working_memory(cpu_offload), {});
  EXPECT_TRUE(result.result.image == direct_run(cpu_offload, reduced))
      << "the image differs from a direct cpu_offload run with reduced working memory";
}

// Every edit attempt runs out of memory during denoising, each time at another allocation, and
// some of those are block loads on sequential_offload's worker. So the manager retries, falls
// back through every strategy, lowers the resolution and does it all again before it gives up,
// and nothing may be left allocated.
TEST(ManagerRecovery, ExhaustsEveryStrategyAtEverySize) {
  CpuCachingAllocator allocator;
  const ScopedAllocator scope(allocator);
  memory::EventLog events;
  memory::MemoryConfig config = test_config();
  config.allow_resolution_reduction = true;
  memory::MemoryManager manager(config, machine_with_limit(64ull << 30), &events);
  manager.configure(0, 0, 0);
  memory::ManagedEditRequest request = small_edit_request();
  request.edit.output_size = ImageSize{512, 512};
  request.edit.reference_pixels = 512.0 * 512.0;
  int faults = 0;
  const auto fail_in_denoising = [&](const EditProgress& progress) {
    if (progress.stage == "vae_encode") {
      // Within the first 150 allocations after the VAE encode: the denoising stage makes more.
      allocator.fail_allocation_after(1 + (faults++ * 37) % 150);
    }
  };

  std::vector<memory::Attempt> attempts;
  try {
    manager.edit(tiny_model(), request, PipelineLoadOptions{},
                 manager.candidates({"fp16_full", "cpu_offload", "sequential_offload"}),
                 fail_in_denoising);
    ADD_FAILURE() << "an edit succeeded although every attempt had a fault";
  } catch (const memory::MemoryExhaustedError& error) {
    attempts = error.attempts();
  }
  allocator.fail_allocation_after(0);

  std::vector<std::string> expected;
  for (int size = 0; size < 2; ++size) {
    for (const std::string name : {"fp16_full", "cpu_offload", "sequential_offload"}) {
      expected.push_back(name + " load success");
      expected.push_back(name + " edit out_of_memory");
      expected.push_back(name + " edit out_of_memory reduced");
    }
  }
  EXPECT_EQ(attempt_lines(attempts), expected);
  EXPECT_EQ(faults, 12);
  EXPECT_EQ(allocator.stats().oom_count, 12);
  EXPECT_EQ(resolution_reductions(events), (std::vector<std::string>{"512 -> 352"}));
  EXPECT_EQ(allocator.stats().allocated_bytes.current, 0) << "live blocks left behind";
  allocator.empty_cache();
  EXPECT_EQ(allocator.stats().reserved_bytes.current, 0);
}

// The plans see a roomy machine, but the allocator has less (another consumer took the rest):
// the first edit runs out of memory and the retry with reduced working memory fits.
TEST(ManagerRecovery, RetryWithReducedWorkingMemoryFits) {
  const std::uint64_t capacity = allocated_peak("fp16_full", /*reduced=*/true) + (8u << 20);
  ASSERT_LT(capacity, allocated_peak("fp16_full"));
  CpuCachingAllocator allocator({.capacity = capacity});
  const ScopedAllocator scope(allocator);
  memory::EventLog events;
  memory::MemoryManager manager(test_config(), machine_with_limit(64ull << 30), &events);
  // Free memory is small next to the machine the plans assume, so thresholds are off here.
  manager.configure(0, 0, 0);

  const memory::ManagedEditResult result =
      manager.edit(tiny_model(), small_edit_request(), PipelineLoadOptions{}, manager.candidates());

  EXPECT_EQ(result.strategy.name, "fp16_full");
  EXPECT_EQ(attempt_lines(result.attempts),
            (std::vector<std::string>{"fp16_full load success", "fp16_full edit out_of_memory",
                                      "fp16_full edit success reduced"}));
  EXPECT_EQ(recovery_events(events),
            (std::vector<std::string>{"out_of_memory fp16_full", "retry fp16_full"}));

  const memory::LoadStrategy fp16 = memory::parse_strategy("fp16_full");
  const EditMemoryOptions reduced =
      memory::working_memory_options(memory::with_reduced_working_memory(fp16), {});
  EXPECT_TRUE(result.result.image == direct_run(fp16, reduced))
      << "the retried image differs from a direct run with reduced working memory";
}

// A budget between fp16_full's allocated and reserved peaks fits only because the allocator
// empties its cache before it rejects a request, so the manager caps the allocator at the
// budget for the edit and restores the capacity afterwards.
TEST(ManagerBudget, CapsAllocatorWhenFitNeedsFlushes) {
  const std::uint64_t budget = allocated_peak("fp16_full") + (4u << 20);
  CpuCachingAllocator allocator;
  const ScopedAllocator scope(allocator);
  memory::MemoryManager manager(test_config(), machine_with_limit(budget));
  manager.configure(0, 0, 0);

  const memory::ManagedEditResult result =
      manager.edit(tiny_model(), small_edit_request(), PipelineLoadOptions{}, manager.candidates());

  EXPECT_EQ(result.strategy.name, "fp16_full");
  EXPECT_EQ(attempt_lines(result.attempts),
            (std::vector<std::string>{"fp16_full load success", "fp16_full edit success"}));
  ASSERT_TRUE(result.plans.front().fit_by_capped_run);
  EXPECT_GT(result.plans.front().peak_bytes.at("device"), budget);
  EXPECT_LE(result.peak_reserved_bytes, budget);
  EXPECT_GT(allocator.stats().cache_flushes, 0);
  EXPECT_EQ(allocator.capacity(), kUnlimitedCapacity);
}

TEST(ManagerThresholds, TriggerSwitchesBeforeOutOfMemory) {
  // Room for every strategy; the fallback trigger is 5% of it (its cap).
  const std::uint64_t capacity = 3 * allocated_peak("fp16_full");
  const std::uint64_t trigger = capacity / 20;
  CpuCachingAllocator allocator({.capacity = capacity});
  const ScopedAllocator scope(allocator);
  memory::EventLog events;
  memory::MemoryManager manager(test_config(), machine_with_limit(capacity), &events);
  manager.configure(0, 0, trigger);

  // At the first step boundary another consumer takes all but half the trigger. It lets go
  // when the next strategy starts loading.
  std::mutex ballast_mutex;
  std::optional<Allocation> ballast;
  bool pressed = false;
  const auto press_memory = [&](const EditProgress& progress) {
    std::lock_guard lock(ballast_mutex);
    if (!pressed && progress.stage == "denoising" && progress.step == 1) {
      pressed = true;
      const auto allocated = static_cast<std::uint64_t>(allocator.stats().allocated_bytes.current);
      ballast = allocator.allocate(capacity - allocated - trigger / 2);
    }
  };
  PipelineLoadOptions base;
  base.on_residency_event = [&](const ResidencyEvent& event) {
    std::lock_guard lock(ballast_mutex);
    if (ballast && event.kind == ResidencyEventKind::onload_start) {
      allocator.deallocate(*ballast);
      ballast.reset();
    }
  };

  const memory::ManagedEditResult result =
      manager.edit(tiny_model(), small_edit_request(), base, manager.candidates(), press_memory);
  ASSERT_TRUE(pressed);
  ASSERT_FALSE(ballast.has_value());

  EXPECT_EQ(result.strategy.name, "fp8_optimized");
  EXPECT_EQ(attempt_lines(result.attempts),
            (std::vector<std::string>{"fp16_full load success", "fp16_full edit threshold",
                                      "fp8_optimized load success", "fp8_optimized edit success"}));
  EXPECT_EQ(recovery_events(events),
            (std::vector<std::string>{"threshold fallback_trigger",
                                      "fallback fp16_full -> fp8_optimized"}));
  EXPECT_EQ(allocator.stats().oom_count, 0);

  const memory::LoadStrategy fp8 = memory::parse_strategy("fp8_optimized");
  EXPECT_TRUE(result.result.image == direct_run(fp8, memory::working_memory_options(fp8, {})))
      << "the image differs from a direct fp8_optimized run";
}

// Persistent pressure: the trigger exceeds the allocator's whole capacity, so free memory is
// below it at every step boundary. The manager moves to leaner strategies while there are any,
// then lets the leanest finish instead of giving up.
TEST(ManagerThresholds, LeanestStrategyFinishesUnderPressure) {
  const std::uint64_t capacity = 3 * allocated_peak("fp16_full");
  CpuCachingAllocator allocator({.capacity = capacity});
  const ScopedAllocator scope(allocator);
  memory::EventLog events;
  // The plans and the trigger's cap (5%) see a machine 40 times larger than the allocator.
  memory::MemoryManager manager(test_config(), machine_with_limit(40 * capacity), &events);
  manager.configure(0, 0, capacity);

  const memory::ManagedEditResult result =
      manager.edit(tiny_model(), small_edit_request(), PipelineLoadOptions{}, manager.candidates());

  EXPECT_EQ(result.strategy.name, "cpu_offload");
  EXPECT_EQ(recovery_events(events),
            (std::vector<std::string>{
                "threshold fallback_trigger", "fallback fp16_full -> fp8_optimized",
                "threshold fallback_trigger", "fallback fp8_optimized -> cpu_offload",
                "threshold fallback_trigger"}));
  EXPECT_EQ(attempt_lines(result.attempts),
            (std::vector<std::string>{"fp16_full load success", "fp16_full edit threshold",
                                      "fp8_optimized load success", "fp8_optimized edit threshold",
                                      "cpu_offload load success", "cpu_offload edit success"}));
}

// Reserved memory stays near the capacity at the step boundaries (the cache filled it during
// the VAE encode), while the live blocks are far below it: no switch.
TEST(ManagerThresholds, CachedBlocksCountAsFree) {
  const memory::LoadStrategy fp16 = memory::parse_strategy("fp16_full");
  const memory::PlanRequest plan_request = small_plan_request(kWidth, kHeight);
  // The first capacity, going down from the unlimited reserved peak in steps of 4 MiB, at which
  // less than 5% of the capacity is unreserved at a step boundary.
  const memory::Planner planner(tiny_model(), PipelineLoadOptions{});
  std::uint64_t capacity =
      planner.plan(fp16, plan_request, unlimited_budget()).peak_bytes.at("device");
  std::uint64_t least_unreserved = capacity;
  for (int attempt = 0; attempt < 12 && least_unreserved >= capacity / 20; ++attempt) {
    capacity -= 4u << 20;
    CpuCachingAllocator dry({.dry_run = true, .capacity = capacity});
    const ScopedAllocator dry_scope(dry);
    const EditPipeline pipeline = EditPipeline::load(tiny_model(), fp16.load_options({}));
    least_unreserved = capacity;
    pipeline.run(memory::plan_edit_request(plan_request), {}, [&](const EditProgress& progress) {
      if (progress.stage == "denoising" && progress.step < progress.steps) {
        const auto reserved = static_cast<std::uint64_t>(dry.stats().reserved_bytes.current);
        least_unreserved = std::min(least_unreserved, capacity - reserved);
      }
    });
  }
  ASSERT_LT(least_unreserved, capacity / 20) << "no capacity found where the cache fills it";

  CpuCachingAllocator allocator({.capacity = capacity});
  const ScopedAllocator scope(allocator);
  memory::EventLog events;
  memory::MemoryManager manager(test_config(), machine_with_limit(capacity), &events);
  manager.configure(0, 0, capacity / 20);
  std::uint64_t unreserved_at_step = capacity;
  const auto watch = [&](const EditProgress& progress) {
    if (progress.stage == "denoising" && progress.step < progress.steps) {
      const auto reserved = static_cast<std::uint64_t>(allocator.stats().reserved_bytes.current);
      unreserved_at_step = std::min(unreserved_at_step, capacity - reserved);
    }
  };

  const memory::ManagedEditResult result = manager.edit(
      tiny_model(), small_edit_request(), PipelineLoadOptions{}, manager.candidates(), watch);

  EXPECT_LT(unreserved_at_step, capacity / 20);
  EXPECT_EQ(result.strategy.name, "fp16_full");
  EXPECT_TRUE(recovery_events(events).empty());
}

TEST(ManagerAdaptive, SkipsStrategyThatRanOutOfMemory) {
  TemporaryDirectory folder;
  memory::HistoryStore history = memory::HistoryStore::open(folder / "history.sqlite");
  const std::uint64_t capacity = fitting_capacity("cpu_offload", /*reduced=*/true);
  memory::MemoryConfig config = test_config();
  config.mode = memory::Mode::adaptive;
  config.oom_retry_attempts = 0;
  const memory::HardwareAssessment limited = machine_with_limit(capacity);

  {
    CpuCachingAllocator allocator({.capacity = capacity});
    const ScopedAllocator scope(allocator);
    memory::MemoryManager manager(config, limited, nullptr, &history);
    manager.set_first_strategy("fp16_full");
    const memory::ManagedEditResult first = manager.edit(
        tiny_model(), small_edit_request(), PipelineLoadOptions{}, manager.candidates());
    ASSERT_EQ(first.strategy.name, "cpu_offload");
  }
  const memory::WorkloadKey fp16_key{limited.fingerprint, "tiny", memory::size_bucket(256, 256),
                                     "fp16_full"};
  ASSERT_TRUE(history.failed_with_oom(fp16_key));

  // The same machine without the limit: every strategy fits, fp16_full is skipped.
  memory::HardwareAssessment roomy = memory::describe_machine(64ull << 30, 64ull << 30);
  roomy.fingerprint = limited.fingerprint;
  CpuCachingAllocator allocator;
  const ScopedAllocator scope(allocator);
  memory::MemoryManager adaptive(config, roomy, nullptr, &history);
  const memory::ManagedEditResult second = adaptive.edit(
      tiny_model(), small_edit_request(), PipelineLoadOptions{}, adaptive.candidates());

  EXPECT_EQ(std::count(second.recommended.begin(), second.recommended.end(), "fp16_full"), 0);
  EXPECT_EQ(second.recommended.front(), "cpu_offload") << "measured successes come first";
  EXPECT_NE(second.strategy.name, "fp16_full");
  for (const memory::StrategyPlan& plan : second.plans) {
    EXPECT_TRUE(plan.fits) << plan.strategy.name;
  }

  // Other size buckets and other modes keep fp16_full.
  const std::vector<std::string> other_bucket =
      adaptive.get_recommended_strategy(second.plans, "tiny", {1024, 1024});
  EXPECT_EQ(other_bucket.front(), "fp16_full");
  memory::MemoryConfig performance = config;
  performance.mode = memory::Mode::performance;
  const memory::MemoryManager by_speed(performance, roomy, nullptr, &history);
  const std::vector<std::string> ranked =
      by_speed.get_recommended_strategy(second.plans, "tiny", {kWidth, kHeight});
  EXPECT_EQ(std::count(ranked.begin(), ranked.end(), "fp16_full"), 1);
}

// An allocator that sleeps once, in the first allocation after stall_next(), and passes every
// call to `inner`: a stand-in for a host that swaps when memory runs short.
class StallingAllocator final : public Allocator {
 public:
  explicit StallingAllocator(CpuCachingAllocator& inner) : inner_(inner) {}

  void stall_next(std::chrono::milliseconds duration) { stall_ms_ = duration.count(); }

  Allocation allocate(std::size_t bytes) override {
    if (const std::int64_t ms = stall_ms_.exchange(0); ms > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    }
    return inner_.allocate(bytes);
  }
  void deallocate(const Allocation& allocation) noexcept override { inner_.deallocate(allocation); }
  Device device() const override { return inner_.device(); }
  bool dry_run() const override { return inner_.dry_run(); }
  AllocatorStats stats() const override { return inner_.stats(); }
  void reset_peaks() override { inner_.reset_peaks(); }
  std::size_t capacity() const override { return inner_.capacity(); }
  void set_capacity(std::size_t bytes) override { inner_.set_capacity(bytes); }
  void empty_cache() override { inner_.empty_cache(); }
  void fail_allocation_after(std::int64_t k) override { inner_.fail_allocation_after(k); }

 private:
  CpuCachingAllocator& inner_;
  std::atomic<std::int64_t> stall_ms_ = 0;
};

struct SlowStepRun {
  memory::ManagedEditResult result;
  memory::HardwareAssessment hardware;
  // Seconds of the stalled third step and the longer of the two before it.
  double stalled_step_s = 0.0;
  double longest_earlier_step_s = 0.0;
};

// A 64x64 edit with a 256x256 reference in four steps, fp16_full first and cpu_offload after
// it. The third step of the first attempt stalls for ten times the longer of the two steps
// before it, so it is at least four times their median whatever the host's load.
// `critical_bytes` is the critical threshold: 1 byte puts memory near capacity at every step
// boundary, and 0 turns the threshold off.
SlowStepRun edit_with_slow_third_step(memory::Mode mode, std::uint64_t critical_bytes,
                                      memory::HistoryStore* history) {
  CpuCachingAllocator inner;
  StallingAllocator allocator(inner);
  const ScopedAllocator scope(allocator);
  memory::MemoryConfig config = test_config();
  config.mode = mode;
  SlowStepRun run;
  run.hardware = machine_with_limit(64ull << 30);
  memory::MemoryManager manager(config, run.hardware, nullptr, history);
  manager.configure(0, critical_bytes, 0);
  memory::ManagedEditRequest request = small_edit_request();
  request.edit.output_size = ImageSize{64, 64};
  request.edit.reference_pixels = 256.0 * 256.0;  // the smallest accepted, for speed
  request.edit.steps = 4;

  bool first_attempt = true;
  const auto stall_third_step = [&](const EditProgress& progress) {
    if (!first_attempt || progress.stage != "denoising") {
      return;
    }
    if (progress.step <= 2) {
      run.longest_earlier_step_s = std::max(run.longest_earlier_step_s, progress.seconds);
    }
    if (progress.step == 2) {
      allocator.stall_next(std::chrono::milliseconds(
          static_cast<std::int64_t>(std::ceil(10'000 * run.longest_earlier_step_s)) + 10));
    } else if (progress.step == 3) {
      run.stalled_step_s = progress.seconds;
      first_attempt = false;
    }
  };
  run.result = manager.edit(tiny_model(), request, PipelineLoadOptions{},
                            manager.candidates({"fp16_full", "cpu_offload"}), stall_third_step);
  return run;
}

// In adaptive mode a step several times slower than the earlier ones, with memory near
// capacity, is a soft out-of-memory. The manager leaves the strategy for a leaner one and
// records the failure, so the next adaptive run skips the strategy.
TEST(ManagerAdaptive, SoftOutOfMemorySwitchesAndIsRemembered) {
  TemporaryDirectory folder;
  memory::HistoryStore history = memory::HistoryStore::open(folder / "history.sqlite");

  const SlowStepRun run = edit_with_slow_third_step(memory::Mode::adaptive, 1, &history);

  ASSERT_GT(run.stalled_step_s, 4 * run.longest_earlier_step_s) << "the third step did not stall";
  EXPECT_EQ(run.result.strategy.name, "cpu_offload");
  EXPECT_EQ(attempt_lines(run.result.attempts),
            (std::vector<std::string>{"fp16_full load success", "fp16_full edit soft_out_of_memory",
                                      "cpu_offload load success", "cpu_offload edit success"}));
  const memory::WorkloadKey fp16_key{run.hardware.fingerprint, "tiny", memory::size_bucket(64, 64),
                                     "fp16_full"};
  EXPECT_TRUE(history.failed_with_oom(fp16_key));

  memory::MemoryConfig config = test_config();
  config.mode = memory::Mode::adaptive;
  const memory::MemoryManager next(config, run.hardware, nullptr, &history);
  const std::vector<std::string> ranked =
      next.get_recommended_strategy(run.result.plans, "tiny", {64, 64});
  EXPECT_EQ(std::count(ranked.begin(), ranked.end(), "fp16_full"), 0);
}

// The same stall without memory pressure, or outside adaptive mode, is only a slow step.
TEST(ManagerAdaptive, SlowStepAloneKeepsStrategy) {
  for (const auto& [mode, critical_bytes] :
       {std::pair{memory::Mode::adaptive, std::uint64_t{0}},
        std::pair{memory::Mode::performance, std::uint64_t{1}}}) {
    SCOPED_TRACE(critical_bytes == 0 ? "adaptive without pressure" : "performance under pressure");
    const SlowStepRun run = edit_with_slow_third_step(mode, critical_bytes, nullptr);

    ASSERT_GT(run.stalled_step_s, 4 * run.longest_earlier_step_s) << "the third step did not stall";
    EXPECT_EQ(run.result.strategy.name, "fp16_full");
    EXPECT_EQ(attempt_lines(run.result.attempts),
              (std::vector<std::string>{"fp16_full load success", "fp16_full edit success"}));
  }
}

// The manager samples memory during the load and the edit but not while it plans, nor while it
// loads an offloaded placement, whose file checks are dry runs too: a dry-run allocator is
// installed process-wide, and a sampler reading it could outlive it. fp16_full loads resident,
// cpu_offload and sequential_offload run those checks.
TEST(ManagerSampling, PausesWhilePlanningAndCheckingFiles) {
  for (const std::string first : {"fp16_full", "cpu_offload", "sequential_offload"}) {
    SCOPED_TRACE(first);
    CpuCachingAllocator allocator;
    const ScopedAllocator scope(allocator);
    memory::MemoryProfiler profiler(Device::cpu());
    std::atomic<int> samples_of_dry_runs = 0;
    profiler.on_snapshot([&](const memory::MemorySnapshot&) {
      if (current_allocator(Device::cpu()).dry_run()) {
        ++samples_of_dry_runs;
      }
    });
    memory::MemoryConfig config = test_config();
    config.sampling_interval_ms = 1;
    memory::MemoryManager manager(config, machine_with_limit(64ull << 30), nullptr, nullptr,
                                  &profiler);
    manager.configure(0, 0, 0);
    manager.set_first_strategy(first);
    memory::ManagedEditRequest request = small_edit_request();
    request.edit.reference_pixels = 256.0 * 256.0;  // the smallest accepted, for speed

    const memory::ManagedEditResult result =
        manager.edit(tiny_model(), request, PipelineLoadOptions{}, manager.candidates());

    EXPECT_EQ(result.strategy.name, first);
    EXPECT_EQ(samples_of_dry_runs.load(), 0);
    EXPECT_FALSE(profiler.sampling());
    ASSERT_GE(result.samples.size(), 2u);
    const bool saw_weights =
        std::any_of(result.samples.begin(), result.samples.end(),
                    [](const memory::MemorySnapshot& s) { return s.device_allocated_bytes > 0; });
    EXPECT_TRUE(saw_weights);
    std::vector<std::string> marks;
    for (const memory::StageMark& mark : result.marks) {
      marks.push_back(mark.name);
    }
    EXPECT_NE(std::find(marks.begin(), marks.end(), "denoising step 1"), marks.end());
    EXPECT_NE(std::find(marks.begin(), marks.end(), "vae_decode"), marks.end());
  }
}

}  // namespace
}  // namespace ethereal::manager_test
