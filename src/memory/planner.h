// The memory planner: runs the real load and edit code with a dry-run allocator for each
// candidate strategy and reports the peak memory per tier and per stage, before a byte of
// weights is read.
//
// A dry run counts every allocation with the real allocator's rounding and caching rules, so
// the planned peaks are what a real run of the same code reserves (tests hold the two within
// 2%). Weight sizes come from the checkpoint headers; images are stand-ins of the requested
// sizes. Denoising steps all allocate alike, so the plan runs at most two steps.
//
// Fitting: the reserved peak counts cached free blocks, but an allocator with a capacity empties
// its cache before it refuses a request, so a run fits in less than its reserved peak, down to
// about its allocated peak. A plan whose reserved peak exceeds the device budget is therefore run
// again with a dry-run allocator capped at the budget; the strategy fits when that run completes.
// A real run fits under the same cap exactly when the capped dry run does (tests check both
// sides of the boundary), provided the real allocator is capped at the budget too (the memory
// manager caps it during an edit).
//
// Tiers: with the CPU backend the device is process memory, so the host tier equals the device
// tier. When planning for a machine with a separate accelerator (TierBudget::device_is_host
// false), the host tier holds what the placement keeps off the device: with model_offload the
// components that wait in host memory, with sequential_offload the blocks staged for transfer;
// blocks streamed from the memory-mapped checkpoint live in the page cache and are not counted.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "io/image_size.h"
#include "io/model_directory.h"
#include "memory/strategy.h"
#include "pipeline/edit_pipeline.h"

namespace ethereal::memory {

// The edit to plan for.
struct PlanRequest {
  std::vector<ImageSize> image_sizes = {{1024, 1024}};  // input images, at least one
  std::optional<ImageSize> output_size;                 // default: from the last image
  double reference_pixels = 1024.0 * 1024.0;            // as EditRequest::reference_pixels
  int steps = 40;
  double cfg_scale = 4.0;
  std::string prompt = "Change the color of the car to red";
  EditMemoryOptions memory;
};

// Memory available to a plan, after the safety margin.
struct TierBudget {
  std::uint64_t device_bytes = 0;
  std::uint64_t host_bytes = 0;
  // True with the CPU backend: one memory serves both tiers and is counted once.
  bool device_is_host = true;
};

struct StrategyPlan {
  LoadStrategy strategy;
  bool fits = false;
  // Why it does not fit (empty when it fits).
  std::string reason;
  // Bytes missing on the tightest tier (0 when it fits). On the device tier this is an estimate
  // from the allocated peak, because the exact need under a capacity is only known to lie
  // between the allocated peak and the reserved peak.
  std::uint64_t shortfall_bytes = 0;
  // Resident weights after loading (0 for placements that load at each stage).
  std::uint64_t weight_bytes = 0;
  // Peak reserved bytes per tier over load and edit: "device" and "host".
  std::map<std::string, std::uint64_t> peak_bytes;
  // Peak reserved device bytes per stage: "load", "text_encoding", "vae_encode", "denoising",
  // "vae_decode".
  std::map<std::string, std::uint64_t> stage_peak_bytes;
  // Peak allocated (not reserved) device bytes over load and edit, with an unlimited cache.
  std::uint64_t peak_allocated_bytes = 0;
  // Whether the fit was decided by a second dry run capped at the device budget, because the
  // reserved peak exceeds the budget.
  bool fit_by_capped_run = false;
  double plan_s = 0.0;
};

class Planner {
 public:
  // `base` carries the precision, LoRAs and kept_blocks; each strategy sets the weight format
  // and placement.
  Planner(ModelDirectory model, PipelineLoadOptions base);

  // Plans one strategy. Invalid model files or requests throw InvalidInputError; a plan never
  // throws OutOfMemoryError (a capped dry run that runs out only decides `fits`).
  StrategyPlan plan(const LoadStrategy& strategy, const PlanRequest& request,
                    const TierBudget& budget) const;
  // Plans each strategy in order. With `reduce_working_memory`, a strategy that does not fit
  // is planned again with attention in query tiles and a tiled VAE, and that plan is returned
  // when it fits or, when neither fits, when it misses fewer bytes.
  std::vector<StrategyPlan> plan_all(const std::vector<LoadStrategy>& strategies,
                                     const PlanRequest& request, const TierBudget& budget,
                                     bool reduce_working_memory = true) const;

  const ModelDirectory& model() const { return model_; }

 private:
  ModelDirectory model_;
  PipelineLoadOptions base_;
};

// The edit request a plan runs: zero-filled images of the planned sizes.
EditRequest plan_edit_request(const PlanRequest& request);

}  // namespace ethereal::memory
