#include "memory/planner.h"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>

#include "runtime/allocator.h"
#include "runtime/error.h"

namespace ethereal::memory {
namespace {

using Clock = std::chrono::steady_clock;

// Denoising steps run by a plan: every step allocates alike, and the second shows the effect of
// blocks cached by the first.
constexpr int kPlannedSteps = 2;

std::uint64_t to_bytes(std::int64_t value) {
  return static_cast<std::uint64_t>(std::max<std::int64_t>(value, 0));
}

// Allocated bytes after a dry resident load with `options` (the weights that model_offload
// keeps in host memory while they are off the device).
std::uint64_t resident_weight_bytes(const ModelDirectory& model, PipelineLoadOptions options) {
  options.placement = Placement::resident;
  CpuCachingAllocator dry({.dry_run = true});
  const ScopedAllocator scope(dry);
  const EditPipeline pipeline = EditPipeline::load(model, options);
  return to_bytes(dry.stats().allocated_bytes.current);
}

// Runs the load and the edit again with a dry-run allocator capped at `capacity`. Returns 0
// when the run completes, otherwise the bytes the refused allocation lacked.
std::uint64_t capped_shortfall(const ModelDirectory& model, const PipelineLoadOptions& options,
                               const EditRequest& edit, const EditMemoryOptions& memory,
                               std::uint64_t capacity) {
  CpuCachingAllocator dry({.dry_run = true, .capacity = static_cast<std::size_t>(capacity)});
  const ScopedAllocator scope(dry);
  try {
    const EditPipeline pipeline = EditPipeline::load(model, options);
    pipeline.run(edit, memory);
  } catch (const OutOfMemoryError& error) {
    const OutOfMemoryError::Figures& figures = error.figures();
    const std::uint64_t needed =
        figures.reserved_bytes + CpuCachingAllocator::round_size(figures.requested_bytes);
    return needed > capacity ? needed - capacity : 1;
  }
  return 0;
}

}  // namespace

EditRequest plan_edit_request(const PlanRequest& request) {
  if (request.image_sizes.empty()) {
    throw InvalidInputError("a plan needs at least one input image size");
  }
  EditRequest edit;
  for (const ImageSize& size : request.image_sizes) {
    edit.images.emplace_back(size.width, size.height, 3);
  }
  edit.prompt = request.prompt;
  edit.steps = std::min(request.steps, kPlannedSteps);
  edit.cfg_scale = request.cfg_scale;
  edit.output_size = request.output_size;
  edit.reference_pixels = request.reference_pixels;
  return edit;
}

Planner::Planner(ModelDirectory model, PipelineLoadOptions base)
    : model_(std::move(model)), base_(std::move(base)) {}

StrategyPlan Planner::plan(const LoadStrategy& strategy, const PlanRequest& request,
                           const TierBudget& budget) const {
  const auto start = Clock::now();
  const EditRequest edit = plan_edit_request(request);
  validate_edit_request(edit);
  const PipelineLoadOptions options = strategy.load_options(base_);

  StrategyPlan plan;
  plan.strategy = strategy;
  const EditMemoryOptions memory = working_memory_options(strategy, request.memory);

  std::uint64_t device_peak = 0;
  std::string peak_stage;
  {
    CpuCachingAllocator dry({.dry_run = true});
    const ScopedAllocator scope(dry);
    const EditPipeline pipeline = EditPipeline::load(model_, options);
    AllocatorStats stats = dry.stats();
    plan.weight_bytes = to_bytes(stats.allocated_bytes.current);
    plan.stage_peak_bytes["load"] = to_bytes(stats.reserved_bytes.peak);
    plan.peak_allocated_bytes = to_bytes(stats.allocated_bytes.peak);
    dry.reset_peaks();
    pipeline.run(edit, memory, [&](const EditProgress& progress) {
      const AllocatorStats now = dry.stats();
      std::uint64_t& stage = plan.stage_peak_bytes[progress.stage];
      stage = std::max(stage, to_bytes(now.reserved_bytes.peak));
      plan.peak_allocated_bytes =
          std::max(plan.peak_allocated_bytes, to_bytes(now.allocated_bytes.peak));
      dry.reset_peaks();
    });
    for (const auto& [stage, bytes] : plan.stage_peak_bytes) {
      if (bytes > device_peak) {
        device_peak = bytes;
        peak_stage = stage;
      }
    }
  }

  std::uint64_t host_peak = device_peak;
  if (!budget.device_is_host) {
    // Components wait in host memory while another one runs on the device.
    host_peak =
        strategy.placement == Placement::model_offload ? resident_weight_bytes(model_, options) : 0;
  }
  plan.peak_bytes["device"] = device_peak;
  plan.peak_bytes["host"] = host_peak;

  std::uint64_t device_missing = 0;
  if (device_peak > budget.device_bytes) {
    plan.fit_by_capped_run = true;
    const std::uint64_t missing_at_refusal =
        capped_shortfall(model_, options, edit, memory, budget.device_bytes);
    if (missing_at_refusal > 0) {
      const std::uint64_t missing_at_peak = plan.peak_allocated_bytes > budget.device_bytes
                                                ? plan.peak_allocated_bytes - budget.device_bytes
                                                : 0;
      device_missing = std::max(missing_at_refusal, missing_at_peak);
    }
  }
  const std::uint64_t host_missing =
      !budget.device_is_host && host_peak > budget.host_bytes ? host_peak - budget.host_bytes : 0;
  plan.fits = device_missing == 0 && host_missing == 0;
  plan.shortfall_bytes = std::max(device_missing, host_missing);
  if (device_missing > 0) {
    plan.reason = fmt::format(
        "needs about {} of {} memory ({} reserved at its peak in stage {} with a full cache), "
        "{} more than the {} available",
        format_mib(budget.device_bytes + device_missing), budget.device_is_host ? "host" : "device",
        format_mib(device_peak), peak_stage, format_mib(device_missing),
        format_mib(budget.device_bytes));
  } else if (host_missing > 0) {
    plan.reason =
        fmt::format("keeps {} of offloaded weights in host memory, {} more than the {} available",
                    format_mib(host_peak), format_mib(host_missing), format_mib(budget.host_bytes));
  }
  plan.plan_s = std::chrono::duration<double>(Clock::now() - start).count();
  return plan;
}

std::vector<StrategyPlan> Planner::plan_all(const std::vector<LoadStrategy>& strategies,
                                            const PlanRequest& request, const TierBudget& budget,
                                            bool reduce_working_memory) const {
  std::vector<StrategyPlan> plans;
  plans.reserve(strategies.size());
  for (const LoadStrategy& strategy : strategies) {
    StrategyPlan full = plan(strategy, request, budget);
    if (!full.fits && reduce_working_memory &&
        !(strategy.chunked_attention && strategy.tiled_vae)) {
      StrategyPlan reduced = plan(with_reduced_working_memory(strategy), request, budget);
      // When neither fits, the reduced plan is still the closer one: the memory manager tries
      // it first and its shortfall is the better advice.
      if (reduced.fits || reduced.shortfall_bytes <= full.shortfall_bytes) {
        reduced.plan_s += full.plan_s;
        plans.push_back(std::move(reduced));
        continue;
      }
    }
    plans.push_back(std::move(full));
  }
  return plans;
}

}  // namespace ethereal::memory
