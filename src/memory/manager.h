// The memory manager: assesses the hardware, ranks the load strategies whose plans fit, loads
// with fallback, and runs an edit with recovery.
//
// Selection: every candidate is planned (planner.h). Those that do not fit the budget (the
// capacity minus the safety margin, on every tier) are dropped and the rest are ranked by the
// mode:
//   performance  measured median step time from the history, else the preference order
//   memory       lowest planned device peak
//   quality      most precise weight format, then the preference order
//   adaptive     strategies that ran out of memory for this hardware, model and size bucket
//                are skipped; measured successes come first, fastest first; then the rest in
//                the preference order
// Recovery during an edit, on an out-of-memory error (or a threshold crossing, or a soft
// out-of-memory in adaptive mode): free everything, retry the same strategy with less working
// memory (attention in query tiles and a tiled VAE), then the next strategy, then (when
// allowed) a lower resolution whose output is upscaled back to the requested size; finally
// MemoryExhaustedError, which lists what was tried and what would fit.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/model_directory.h"
#include "memory/config.h"
#include "memory/events.h"
#include "memory/history.h"
#include "memory/planner.h"
#include "memory/profiler.h"
#include "memory/strategy.h"
#include "pipeline/edit_pipeline.h"
#include "runtime/error.h"

namespace ethereal::memory {

struct HardwareAssessment {
  std::string device = "cpu";
  std::string device_name;
  // True with the CPU backend: the device is process memory.
  bool device_is_host = true;
  std::uint64_t device_total_bytes = 0;
  std::uint64_t device_available_bytes = 0;
  std::uint64_t host_total_bytes = 0;
  std::uint64_t host_available_bytes = 0;
  std::optional<std::uint64_t> cgroup_limit_bytes;
  // The --memory-limit cap on the device allocator, when set.
  std::optional<std::uint64_t> memory_limit_bytes;
  // Native fp8 matrix multiplication (CUDA compute capability 8.9 or higher). On the CPU fp8 is
  // a storage format: weights are decoded to bf16 in the kernels.
  bool fp8_native = false;
  std::string fp8_note;
  int cores = 0;
  std::string fingerprint;

  nlohmann::json to_json() const;
};

// This machine; `memory_limit` caps the device tier.
HardwareAssessment assess_this_machine(std::optional<std::uint64_t> memory_limit = std::nullopt);
// A machine described by its memory sizes, for planning ahead: with `device_name` empty the
// device is host memory (a CPU machine); otherwise an accelerator with `device_bytes`, and
// `compute_capability` (major, minor) decides native fp8.
HardwareAssessment describe_machine(std::uint64_t device_bytes, std::uint64_t host_bytes,
                                    const std::string& device_name = {},
                                    std::optional<std::pair<int, int>> compute_capability = {});

// One load or edit attempt, for reports and logs.
struct Attempt {
  std::string strategy;
  std::string phase;    // "load" or "edit"
  std::string outcome;  // "success", "out_of_memory", "threshold", "soft_out_of_memory"
  std::string detail;   // the error message or the reason for the switch
  bool reduced_working_memory = false;
  std::optional<ImageSize> size;  // the computed output size when it was reduced

  nlohmann::json to_json() const;
};

// Every strategy failed: the message lists the attempts and what would fit. Exit status 3.
class MemoryExhaustedError : public Error {
 public:
  MemoryExhaustedError(const std::string& message, std::vector<Attempt> attempts);
  const std::vector<Attempt>& attempts() const { return attempts_; }

 private:
  std::vector<Attempt> attempts_;
};

// What an edit needs besides the pipeline request: the model label for history and logs.
struct ManagedEditRequest {
  EditRequest edit;
  std::string model_label;
};

struct ManagedEditResult {
  EditResult result;
  LoadStrategy strategy;  // the strategy that produced the image
  std::vector<Attempt> attempts;
  std::vector<StrategyPlan> plans;
  std::vector<std::string> recommended;
  bool resolution_reduced = false;
  ImageSize requested_size;
  ImageSize computed_size;
  double load_s = 0.0;
  double total_s = 0.0;
  std::uint64_t peak_allocated_bytes = 0;
  std::uint64_t peak_reserved_bytes = 0;
  std::uint64_t peak_resident_bytes = 0;
  // The profiler's samples and stage marks while the edit loaded and ran (empty without a
  // profiler). Sampling pauses while plans run.
  std::vector<MemorySnapshot> samples;
  std::vector<StageMark> marks;
};

class MemoryManager {
 public:
  // `events`, `history` and `profiler` are optional and must outlive the manager. edit()
  // samples with `profiler` itself, pausing while it plans and while it loads an offloaded
  // placement: a plan, and the file checks of such a load, run in dry runs that swap the
  // process's current allocator, which a sampler thread must not read meanwhile. Callers
  // therefore must not sample with the same profiler during edit().
  MemoryManager(MemoryConfig config, HardwareAssessment hardware, EventLog* events = nullptr,
                HistoryStore* history = nullptr, MemoryProfiler* profiler = nullptr);

  // Thresholds on the snapshot stream: device memory in use above `warning_bytes` or
  // `critical_bytes` is logged once per crossing; free device memory below
  // `fallback_trigger_bytes` switches to a leaner strategy at the next step boundary. Each is
  // capped at a fraction of the device capacity (80%, 90% and 5%), so thresholds sized for the
  // whole machine stay meaningful under a smaller --memory-limit.
  void configure(std::uint64_t warning_bytes, std::uint64_t critical_bytes,
                 std::uint64_t fallback_trigger_bytes);

  // Puts `name` first in every recommendation whose plans include it, whatever the mode (an
  // explicit --strategy); an empty name restores ranking by mode.
  void set_first_strategy(std::string name) { first_strategy_ = std::move(name); }

  // Sends later events to `events` (may be null).
  void set_event_log(EventLog* events) { events_ = events; }

  const HardwareAssessment& hardware() const { return hardware_; }
  const MemoryConfig& config() const { return config_; }
  // Capacity minus the safety margin on each tier.
  TierBudget budget() const;

  // The strategies named in the configuration's preference list (or `preferred` when not
  // empty), in that order. Throws InvalidInputError for an unknown name.
  std::vector<LoadStrategy> candidates(const std::vector<std::string>& preferred = {}) const;

  // The names of the plans that fit, best first for the configured mode.
  std::vector<std::string> get_recommended_strategy(const std::vector<StrategyPlan>& plans,
                                                    const std::string& model_label,
                                                    ImageSize output_size) const;

  // Loads the first strategy in `order` that loads without running out of memory; on an
  // out-of-memory error frees what the attempt allocated, trims the allocator cache, logs the
  // reason and tries the next. Throws MemoryExhaustedError when none loads. `before_load`, when
  // set, runs before each load attempt with the strategy about to load.
  struct Loaded {
    std::unique_ptr<EditPipeline> pipeline;
    LoadStrategy strategy;
    double load_s = 0.0;
  };
  Loaded load_model_with_fallback(const ModelDirectory& model,
                                  const std::vector<LoadStrategy>& order,
                                  const PipelineLoadOptions& base, std::vector<Attempt>& attempts,
                                  const std::function<void(const LoadStrategy&)>& before_load = {});

  // Plans, ranks, loads and edits with recovery (see the top of this file), records the run
  // in the history and the event log. `loaded`, when given, is a model loaded before: it is
  // used when its strategy comes first and released otherwise, and it holds the model that
  // produced the image afterwards.
  ManagedEditResult edit(const ModelDirectory& model, const ManagedEditRequest& request,
                         const PipelineLoadOptions& base,
                         const std::vector<LoadStrategy>& candidates,
                         const EditProgressCallback& progress = {}, Loaded* loaded = nullptr);

 private:
  struct ThresholdState;
  // Checks the thresholds on `snapshot`; returns the reason to switch strategy, or empty.
  std::string check_thresholds(const MemorySnapshot& snapshot);

  MemoryConfig config_;
  HardwareAssessment hardware_;
  EventLog* events_;
  HistoryStore* history_;
  MemoryProfiler* profiler_;
  std::uint64_t warning_bytes_;
  std::uint64_t critical_bytes_;
  std::uint64_t fallback_trigger_bytes_;
  std::string first_strategy_;
  bool above_warning_ = false;
  bool above_critical_ = false;
};

}  // namespace ethereal::memory
