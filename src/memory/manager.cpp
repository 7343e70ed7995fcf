#include "memory/manager.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "io/resample.h"
#include "memory/oom.h"
#include "pipeline/geometry.h"
#include "runtime/allocator.h"
#include "runtime/hardware.h"
#include "runtime/system_memory.h"

namespace ethereal::memory {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Output sides are multiples of 16: the VAE factor (8) times the patch size (2).
constexpr int kOutputSizeMultiple = 16;
// Each resolution reduction halves the pixel count; at most this many, and no side below
// kMinimumReducedSide pixels.
constexpr int kMaxResolutionReductions = 2;
constexpr int kMinimumReducedSide = 256;
// A step this many times slower than the median of the earlier steps, with memory near
// capacity, is a soft out-of-memory (swapping or spilling).
constexpr double kSoftOomSlowdown = 4.0;
// Upper bounds of the thresholds as fractions of the device capacity.
constexpr double kWarningFraction = 0.80;
constexpr double kCriticalFraction = 0.90;
constexpr double kTriggerFraction = 0.05;

// Lowers an allocator's capacity for the lifetime of this object and restores it afterwards.
class CapacityCap {
 public:
  explicit CapacityCap(Allocator& allocator)
      : allocator_(allocator), previous_(allocator.capacity()) {}
  ~CapacityCap() { allocator_.set_capacity(previous_); }
  CapacityCap(const CapacityCap&) = delete;
  CapacityCap& operator=(const CapacityCap&) = delete;

  void lower_to(std::size_t bytes) {
    if (bytes < allocator_.capacity()) {
      spdlog::info("capping the allocator at the budget of {} for this edit", format_mib(bytes));
      allocator_.set_capacity(bytes);
    }
  }

 private:
  Allocator& allocator_;
  std::size_t previous_;
};

// The profiler's recording of one edit, sampled while the edit loads and runs and paused while
// it plans. A dry-run plan installs its allocator process-wide and destroys it afterwards, so a
// sampler thread that read the current allocator during a plan could read a destroyed object.
class EditRecording {
 public:
  EditRecording(MemoryProfiler* profiler, int interval_ms)
      : profiler_(profiler), interval_(interval_ms) {
    if (profiler_ != nullptr && profiler_->sampling()) {
      spdlog::warn("the memory profiler samples already; the edit does not record its own samples");
      profiler_ = nullptr;
    }
  }
  ~EditRecording() { pause(); }
  EditRecording(const EditRecording&) = delete;
  EditRecording& operator=(const EditRecording&) = delete;

  void resume() {
    if (profiler_ != nullptr && !active_) {
      profiler_->start_sampling(interval_);
      active_ = true;
    }
  }

  // Stops the sampler and keeps what it recorded since resume().
  void pause() noexcept {
    if (!active_) {
      return;
    }
    active_ = false;
    try {
      profiler_->stop_sampling();
    } catch (const std::exception& error) {
      spdlog::warn("the memory sampler failed: {}", error.what());
    }
    try {
      for (MemorySnapshot& snapshot : profiler_->samples()) {
        samples_.push_back(std::move(snapshot));
      }
      for (StageMark& mark : profiler_->marks()) {
        marks_.push_back(std::move(mark));
      }
    } catch (const std::exception& error) {
      spdlog::warn("could not keep the memory samples: {}", error.what());
    }
  }

  // Pauses and hands over the recording.
  void finish(ManagedEditResult& result) {
    pause();
    result.samples = std::move(samples_);
    result.marks = std::move(marks_);
  }

 private:
  MemoryProfiler* profiler_;
  std::chrono::milliseconds interval_;
  bool active_ = false;
  std::vector<MemorySnapshot> samples_;
  std::vector<StageMark> marks_;
};

// Raised from the progress callback to leave the pipeline at a step boundary.
struct StrategySwitch {
  std::string outcome;  // "threshold" or "soft_out_of_memory"
  std::string reason;
};

std::uint64_t stat_bytes(std::int64_t value) {
  return static_cast<std::uint64_t>(std::max<std::int64_t>(value, 0));
}

ImageSize output_size_of(const EditRequest& request) {
  if (request.output_size) {
    return *request.output_size;
  }
  const Image& last = request.images.back();
  return default_output_size(last.width(), last.height(), kOutputSizeMultiple);
}

// Half the pixels, sides rounded down to multiples of 16; nullopt below the minimum side.
std::optional<ImageSize> reduced_size(ImageSize size) {
  const double factor = std::sqrt(0.5);
  ImageSize reduced{
      static_cast<int>(size.width * factor) / kOutputSizeMultiple * kOutputSizeMultiple,
      static_cast<int>(size.height * factor) / kOutputSizeMultiple * kOutputSizeMultiple};
  if (std::min(reduced.width, reduced.height) < kMinimumReducedSide) {
    return std::nullopt;
  }
  return reduced;
}

const StrategyPlan* find_plan(const std::vector<StrategyPlan>& plans, const std::string& name) {
  for (const StrategyPlan& plan : plans) {
    if (plan.strategy.name == name) {
      return &plan;
    }
  }
  return nullptr;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

}  // namespace

nlohmann::json HardwareAssessment::to_json() const {
  nlohmann::json json = {{"device", device},
                         {"device_name", device_name},
                         {"device_is_host", device_is_host},
                         {"device_total_bytes", device_total_bytes},
                         {"device_available_bytes", device_available_bytes},
                         {"host_total_bytes", host_total_bytes},
                         {"host_available_bytes", host_available_bytes},
                         {"cgroup_limit_bytes", nullptr},
                         {"memory_limit_bytes", nullptr},
                         {"fp8_native", fp8_native},
                         {"fp8_note", fp8_note},
                         {"cores", cores},
                         {"fingerprint", fingerprint}};
  if (cgroup_limit_bytes) {
    json["cgroup_limit_bytes"] = *cgroup_limit_bytes;
  }
  if (memory_limit_bytes) {
    json["memory_limit_bytes"] = *memory_limit_bytes;
  }
  return json;
}

HardwareAssessment assess_this_machine(std::optional<std::uint64_t> memory_limit) {
  const HardwareInfo info = assess_hardware();
  HardwareAssessment hardware;
  hardware.device = "cpu";
  hardware.device_name = info.cpu.model_name;
  hardware.device_is_host = true;
  hardware.host_total_bytes = info.host.total_bytes;
  hardware.host_available_bytes = host_available_bytes();
  if (info.cgroup && info.cgroup->limit_bytes) {
    hardware.cgroup_limit_bytes = info.cgroup->limit_bytes;
  }
  hardware.memory_limit_bytes = memory_limit;
  // What this process may still reserve: available memory plus what its allocator holds.
  const std::uint64_t reserved =
      stat_bytes(current_allocator(Device::cpu()).stats().reserved_bytes.current);
  hardware.device_total_bytes = hardware.host_total_bytes;
  if (hardware.cgroup_limit_bytes) {
    hardware.device_total_bytes =
        std::min(hardware.device_total_bytes, *hardware.cgroup_limit_bytes);
  }
  hardware.device_available_bytes = hardware.host_available_bytes + reserved;
  if (memory_limit) {
    hardware.device_total_bytes = std::min(hardware.device_total_bytes, *memory_limit);
    hardware.device_available_bytes = std::min(hardware.device_available_bytes, *memory_limit);
  }
  std::vector<std::string> gpu_names;
  for (const GpuInfo& gpu : info.gpus) {
    gpu_names.push_back(gpu.name);
    if (gpu.compute_capability_major * 10 + gpu.compute_capability_minor >= 89) {
      hardware.fp8_native = true;
    }
  }
  hardware.fp8_note = hardware.fp8_native
                          ? "a GPU with compute capability 8.9 or higher has native fp8 matmul, "
                            "but this build runs on the CPU, where fp8 is a storage format"
                          : "the CPU has no fp8 arithmetic: fp8 weights are stored in 1 byte and "
                            "decoded to bf16 inside the matmul kernels";
  // The CPU backend computes in bf16 whatever the GPU offers.
  hardware.fp8_native = false;
  hardware.cores = info.cpu.usable_cores;
  hardware.fingerprint = hardware_fingerprint(info.cpu.model_name, info.cpu.usable_cores,
                                              info.host.total_bytes, gpu_names);
  return hardware;
}

HardwareAssessment describe_machine(std::uint64_t device_bytes, std::uint64_t host_bytes,
                                    const std::string& device_name,
                                    std::optional<std::pair<int, int>> compute_capability) {
  HardwareAssessment hardware;
  hardware.device_is_host = device_name.empty();
  hardware.device = hardware.device_is_host ? "cpu" : "cuda:0";
  hardware.device_name = hardware.device_is_host ? "planned CPU machine" : device_name;
  hardware.host_total_bytes = host_bytes;
  hardware.host_available_bytes = host_bytes;
  hardware.device_total_bytes = hardware.device_is_host ? host_bytes : device_bytes;
  hardware.device_available_bytes = hardware.device_total_bytes;
  if (compute_capability) {
    hardware.fp8_native = compute_capability->first * 10 + compute_capability->second >= 89;
  }
  hardware.fp8_note = hardware.fp8_native
                          ? "compute capability 8.9 or higher: native fp8 matmul"
                          : "no native fp8 matmul: fp8 is a storage format, decoded to bf16";
  hardware.fingerprint = fmt::format("planned | {} | {} GiB host | {} GiB device",
                                     hardware.device_name, host_bytes >> 30, device_bytes >> 30);
  return hardware;
}

nlohmann::json Attempt::to_json() const {
  nlohmann::json json = {{"strategy", strategy},
                         {"phase", phase},
                         {"outcome", outcome},
                         {"detail", detail},
                         {"reduced_working_memory", reduced_working_memory}};
  if (size) {
    json["width"] = size->width;
    json["height"] = size->height;
  }
  return json;
}

MemoryExhaustedError::MemoryExhaustedError(const std::string& message,
                                           std::vector<Attempt> attempts)
    : Error(message), attempts_(std::move(attempts)) {}

MemoryManager::MemoryManager(MemoryConfig config, HardwareAssessment hardware, EventLog* events,
                             HistoryStore* history, MemoryProfiler* profiler)
    : config_(std::move(config)),
      hardware_(std::move(hardware)),
      events_(events),
      history_(history),
      profiler_(profiler),
      warning_bytes_(config_.warning_threshold_bytes()),
      critical_bytes_(config_.critical_threshold_bytes()),
      fallback_trigger_bytes_(config_.fallback_trigger_threshold_bytes()) {}

void MemoryManager::configure(std::uint64_t warning_bytes, std::uint64_t critical_bytes,
                              std::uint64_t fallback_trigger_bytes) {
  warning_bytes_ = warning_bytes;
  critical_bytes_ = critical_bytes;
  fallback_trigger_bytes_ = fallback_trigger_bytes;
}

TierBudget MemoryManager::budget() const {
  const std::uint64_t margin = config_.memory_threshold_bytes();
  auto after_margin = [margin](std::uint64_t bytes) { return bytes > margin ? bytes - margin : 0; };
  TierBudget budget;
  budget.device_is_host = hardware_.device_is_host;
  if (hardware_.device_is_host) {
    // The margin protects the rest of the machine; an explicit memory limit is the user's
    // budget as given.
    std::uint64_t physical =
        after_margin(hardware_.host_available_bytes +
                     stat_bytes(current_allocator(Device::cpu()).stats().reserved_bytes.current));
    if (hardware_.memory_limit_bytes) {
      physical = std::min(physical, *hardware_.memory_limit_bytes);
    }
    budget.device_bytes = physical;
    budget.host_bytes = physical;
  } else {
    budget.device_bytes = after_margin(hardware_.device_available_bytes);
    budget.host_bytes = after_margin(hardware_.host_available_bytes);
  }
  return budget;
}

std::vector<LoadStrategy> MemoryManager::candidates(
    const std::vector<std::string>& preferred) const {
  const std::vector<std::string>& names =
      preferred.empty() ? config_.preferred_strategies : preferred;
  std::vector<LoadStrategy> strategies;
  for (const std::string& name : names) {
    LoadStrategy strategy = parse_strategy(name);
    if (std::find(strategies.begin(), strategies.end(), strategy) == strategies.end()) {
      strategies.push_back(std::move(strategy));
    }
  }
  if (strategies.empty()) {
    throw InvalidInputError("the list of preferred strategies is empty; name at least one of " +
                            standard_strategy_names());
  }
  return strategies;
}

std::vector<std::string> MemoryManager::get_recommended_strategy(
    const std::vector<StrategyPlan>& plans, const std::string& model_label,
    ImageSize output_size) const {
  struct Ranked {
    const StrategyPlan* plan;
    std::size_t preference;
    std::optional<double> measured_step_s;
  };
  std::vector<Ranked> ranked;
  const std::string bucket = size_bucket(output_size.width, output_size.height);
  for (std::size_t i = 0; i < plans.size(); ++i) {
    const StrategyPlan& plan = plans[i];
    if (!plan.fits) {
      continue;
    }
    Ranked entry{&plan, i, std::nullopt};
    if (history_ != nullptr) {
      const WorkloadKey key{hardware_.fingerprint, model_label, bucket, plan.strategy.name};
      if (config_.mode == Mode::adaptive && history_->failed_with_oom(key)) {
        spdlog::info(
            "adaptive mode: skipping {}, which ran out of memory on this machine for "
            "this model and size",
            plan.strategy.name);
        continue;
      }
      entry.measured_step_s = history_->median_step_s(key);
    }
    ranked.push_back(entry);
  }
  auto by_preference = [](const Ranked& a, const Ranked& b) { return a.preference < b.preference; };
  switch (config_.mode) {
    case Mode::memory:
      std::stable_sort(ranked.begin(), ranked.end(), [](const Ranked& a, const Ranked& b) {
        return a.plan->peak_bytes.at("device") < b.plan->peak_bytes.at("device");
      });
      break;
    case Mode::quality:
      std::stable_sort(ranked.begin(), ranked.end(), [](const Ranked& a, const Ranked& b) {
        return a.plan->strategy.precision_rank() < b.plan->strategy.precision_rank();
      });
      break;
    case Mode::performance:
    case Mode::adaptive:
      // Measured strategies first, fastest first; the rest keep the preference order.
      std::stable_sort(ranked.begin(), ranked.end(), [&](const Ranked& a, const Ranked& b) {
        if (a.measured_step_s.has_value() != b.measured_step_s.has_value()) {
          return a.measured_step_s.has_value();
        }
        if (a.measured_step_s && b.measured_step_s) {
          return *a.measured_step_s < *b.measured_step_s;
        }
        return by_preference(a, b);
      });
      break;
  }
  std::vector<std::string> names;
  for (const Ranked& entry : ranked) {
    names.push_back(entry.plan->strategy.name);
  }
  if (!first_strategy_.empty()) {
    auto it = std::find(names.begin(), names.end(), first_strategy_);
    if (it != names.end()) {
      std::rotate(names.begin(), it, it + 1);
    } else if (find_plan(plans, first_strategy_) != nullptr) {
      // The plan does not fit, but the user requested this strategy, so it is tried first.
      names.insert(names.begin(), first_strategy_);
    }
  }
  return names;
}

MemoryManager::Loaded MemoryManager::load_model_with_fallback(
    const ModelDirectory& model, const std::vector<LoadStrategy>& order,
    const PipelineLoadOptions& base, std::vector<Attempt>& attempts,
    const std::function<void(const LoadStrategy&)>& before_load) {
  Allocator& allocator = current_allocator(Device::cpu());
  for (std::size_t i = 0; i < order.size(); ++i) {
    const LoadStrategy& strategy = order[i];
    if (before_load) {
      before_load(strategy);
    }
    const auto start = Clock::now();
    if (events_ != nullptr) {
      events_->record(EventType::load, {{"phase", "start"}, {"strategy", strategy.name}});
    }
    try {
      auto pipeline =
          std::make_unique<EditPipeline>(EditPipeline::load(model, strategy.load_options(base)));
      const double load_s = seconds_since(start);
      attempts.push_back({strategy.name, "load", "success", "", false, std::nullopt});
      if (events_ != nullptr) {
        events_->record(EventType::load,
                        {{"phase", "end"},
                         {"strategy", strategy.name},
                         {"load_s", load_s},
                         {"allocated_bytes", allocator.stats().allocated_bytes.current}});
      }
      return {std::move(pipeline), strategy, load_s};
    } catch (const std::exception& error) {
      if (!is_oom_error(error)) {
        throw;
      }
      allocator.empty_cache();
      attempts.push_back({strategy.name, "load", "out_of_memory", error.what(), false, {}});
      spdlog::warn("loading with {} ran out of memory: {}", strategy.name, error.what());
      if (events_ != nullptr) {
        events_->record(EventType::out_of_memory,
                        {{"phase", "load"}, {"strategy", strategy.name}, {"error", error.what()}});
      }
      const bool last = i + 1 == order.size() || !config_.fallback_enabled;
      if (last) {
        break;
      }
      if (events_ != nullptr) {
        events_->record(EventType::fallback,
                        {{"from", strategy.name}, {"to", order[i + 1].name}, {"phase", "load"}});
      }
    }
  }
  throw MemoryExhaustedError(
      fmt::format("no strategy could load the model: {} ran out of memory",
                  attempts.empty() ? std::string("nothing") : attempts.back().strategy),
      attempts);
}

std::string MemoryManager::check_thresholds(const MemorySnapshot& snapshot) {
  // Thresholds are sized for the whole machine. A smaller capacity (a memory limit) caps them,
  // so that a 2000 MiB trigger does not fire at once under a 1 GiB limit.
  const double capacity =
      static_cast<double>(hardware_.memory_limit_bytes.value_or(hardware_.device_available_bytes));
  const auto cap = [capacity](std::uint64_t bytes, double fraction) {
    return std::min<std::uint64_t>(bytes, static_cast<std::uint64_t>(capacity * fraction));
  };
  const std::uint64_t warning = cap(warning_bytes_, kWarningFraction);
  const std::uint64_t critical = cap(critical_bytes_, kCriticalFraction);
  const std::uint64_t trigger = cap(fallback_trigger_bytes_, kTriggerFraction);
  const std::uint64_t used = snapshot.device_reserved_bytes;
  auto crossing = [&](bool& above, std::uint64_t limit, const char* level) {
    const bool now_above = limit > 0 && used > limit;
    if (now_above && !above) {
      spdlog::warn("device memory in use ({}) crossed the {} threshold ({})", format_mib(used),
                   level, format_mib(limit));
      if (events_ != nullptr) {
        events_->record(EventType::threshold,
                        {{"level", level}, {"used_bytes", used}, {"threshold_bytes", limit}});
      }
    }
    above = now_above;
  };
  crossing(above_warning_, warning, "warning");
  crossing(above_critical_, critical, "critical");
  if (trigger > 0 && snapshot.device_free_bytes < trigger) {
    if (events_ != nullptr) {
      events_->record(EventType::threshold, {{"level", "fallback_trigger"},
                                             {"free_bytes", snapshot.device_free_bytes},
                                             {"threshold_bytes", trigger}});
    }
    return fmt::format("free device memory ({}) fell below the fallback trigger ({})",
                       format_mib(snapshot.device_free_bytes), format_mib(trigger));
  }
  return {};
}

ManagedEditResult MemoryManager::edit(const ModelDirectory& model,
                                      const ManagedEditRequest& managed,
                                      const PipelineLoadOptions& base,
                                      const std::vector<LoadStrategy>& candidate_list,
                                      const EditProgressCallback& progress, Loaded* kept) {
  const auto total_start = Clock::now();
  validate_edit_request(managed.edit);
  Allocator& allocator = current_allocator(Device::cpu());
  allocator.reset_peaks();
  ManagedEditResult managed_result;
  managed_result.requested_size = output_size_of(managed.edit);
  ImageSize size = managed_result.requested_size;
  std::vector<Attempt>& attempts = managed_result.attempts;
  if (events_ != nullptr) {
    events_->record(EventType::edit, {{"phase", "start"},
                                      {"width", size.width},
                                      {"height", size.height},
                                      {"steps", managed.edit.steps}});
  }

  const Planner planner(model, base);
  CapacityCap capacity_cap(allocator);
  EditRecording recording(profiler_, config_.sampling_interval_ms);
  auto record_history = [&](const std::string& strategy, RunOutcome outcome, ImageSize at,
                            double load_s, const EditResult* result, const std::string& detail) {
    if (history_ == nullptr) {
      return;
    }
    RunRecord record;
    record.hardware_fingerprint = hardware_.fingerprint;
    record.model = managed.model_label;
    record.size_bucket = size_bucket(at.width, at.height);
    record.strategy = strategy;
    record.outcome = outcome;
    const AllocatorStats stats = allocator.stats();
    record.peak_device_bytes = stat_bytes(stats.reserved_bytes.peak);
    record.peak_host_bytes = read_process_memory().peak_resident_bytes;
    record.load_s = load_s;
    if (result != nullptr && !result->step_s.empty()) {
      record.steps = static_cast<int>(result->step_s.size());
      double sum = 0.0;
      for (double s : result->step_s) {
        sum += s;
      }
      record.step_s = sum / static_cast<double>(result->step_s.size());
    }
    record.total_s = seconds_since(total_start);
    record.details_json = nlohmann::json({{"detail", detail}}).dump();
    try {
      history_->record(record);
    } catch (const std::exception& error) {
      spdlog::warn("could not record the run in the history {}: {}", history_->path().string(),
                   error.what());
    }
  };

  // The plans at the last size tried, for the advice when nothing fits.
  std::vector<StrategyPlan> last_plans;
  ImageSize last_size = size;
  for (int reduction = 0;; ++reduction) {
    EditRequest request = managed.edit;
    request.output_size = size;
    // A lower resolution applies to the references' VAE copies too: they are part of the
    // transformer's sequence and of the VAE encoder's work.
    const ImageSize& requested = managed_result.requested_size;
    // They stay at least kMinimumReducedSide^2 pixels (or as given, when smaller), the floor of
    // EditRequest::reference_pixels.
    const double scaled = managed.edit.reference_pixels * size.width * size.height /
                          (static_cast<double>(requested.width) * requested.height);
    const double floor_pixels =
        std::min(managed.edit.reference_pixels,
                 static_cast<double>(kMinimumReducedSide) * kMinimumReducedSide);
    request.reference_pixels = std::max(scaled, floor_pixels);
    // Plan every candidate at this size and keep those that fit, best first.
    PlanRequest plan_request;
    plan_request.image_sizes.clear();
    for (const Image& image : request.images) {
      plan_request.image_sizes.push_back({image.width(), image.height()});
    }
    plan_request.output_size = size;
    plan_request.reference_pixels = request.reference_pixels;
    plan_request.steps = request.steps;
    plan_request.cfg_scale = request.cfg_scale;
    plan_request.prompt = request.prompt;
    const TierBudget tier_budget = budget();
    recording.pause();
    std::vector<StrategyPlan> plans = planner.plan_all(candidate_list, plan_request, tier_budget);
    recording.resume();
    std::vector<std::string> order_names =
        get_recommended_strategy(plans, managed.model_label, size);
    for (const StrategyPlan& plan : plans) {
      if (events_ != nullptr) {
        events_->record(EventType::plan, {{"strategy", plan.strategy.name},
                                          {"fits", plan.fits},
                                          {"device_peak_bytes", plan.peak_bytes.at("device")},
                                          {"host_peak_bytes", plan.peak_bytes.at("host")},
                                          {"reason", plan.reason},
                                          {"width", size.width},
                                          {"height", size.height}});
      }
    }
    const bool any_fits =
        std::any_of(order_names.begin(), order_names.end(),
                    [&](const std::string& name) { return find_plan(plans, name)->fits; });
    // Under an explicit memory limit the allocator's capacity is the budget, and a dry run
    // under that capacity fails exactly when the real run would.
    const bool budget_is_capacity = hardware_.memory_limit_bytes.has_value() &&
                                    tier_budget.device_bytes == *hardware_.memory_limit_bytes;
    if (!any_fits && config_.fallback_enabled && !plans.empty() && !budget_is_capacity) {
      // A budget measured from the free host memory may be pessimistic. So the leanest
      // strategy is tried anyway, after an explicitly requested one, before the resolution is
      // reduced.
      const StrategyPlan* leanest = &*std::min_element(
          plans.begin(), plans.end(), [](const StrategyPlan& a, const StrategyPlan& b) {
            if (a.shortfall_bytes != b.shortfall_bytes) {
              return a.shortfall_bytes < b.shortfall_bytes;
            }
            return a.peak_bytes.at("device") < b.peak_bytes.at("device");
          });
      if (std::find(order_names.begin(), order_names.end(), leanest->strategy.name) ==
          order_names.end()) {
        order_names.push_back(leanest->strategy.name);
      }
    }
    if (reduction == 0) {
      managed_result.plans = plans;
      managed_result.recommended = order_names;
    }
    last_plans = plans;
    last_size = size;
    std::vector<LoadStrategy> order;
    for (const std::string& name : order_names) {
      const StrategyPlan* plan = find_plan(plans, name);
      order.push_back(plan->strategy);
      // A plan that fits only because the allocator empties its cache before it rejects a
      // request needs the allocator capped at the budget. Uncapped, the cache would grow past
      // the budget.
      if (hardware_.device_is_host && plan->fits && plan->fit_by_capped_run) {
        capacity_cap.lower_to(tier_budget.device_bytes);
      }
    }
    if (!config_.fallback_enabled && order.size() > 1) {
      order.resize(1);
    }

    std::size_t index = 0;
    while (index < order.size()) {
      std::vector<LoadStrategy> remaining(order.begin() + static_cast<std::ptrdiff_t>(index),
                                          order.end());
      Loaded loaded;
      if (kept != nullptr && kept->pipeline &&
          kept->strategy.weight_format == order[index].weight_format &&
          kept->strategy.placement == order[index].placement) {
        loaded = std::move(*kept);
        loaded.strategy = order[index];
        loaded.load_s = 0.0;
        attempts.push_back({loaded.strategy.name, "load", "success", "reused the loaded model",
                            false, std::nullopt});
      } else if (kept != nullptr && kept->pipeline) {
        // Free the earlier model before loading another.
        kept->pipeline.reset();
        allocator.empty_cache();
      }
      const std::size_t first_load_attempt = attempts.size();
      try {
        if (!loaded.pipeline) {
          // An offloaded placement checks its checkpoints at load time in dry runs, which
          // install a dry-run allocator process-wide as a plan does. A sampler reading it could
          // outlive it, so sampling pauses for those loads.
          const auto sample_resident_loads = [&](const LoadStrategy& strategy) {
            if (strategy.placement == Placement::resident) {
              recording.resume();
            } else {
              recording.pause();
            }
          };
          loaded =
              load_model_with_fallback(model, remaining, base, attempts, sample_resident_loads);
          recording.resume();
        }
      } catch (const MemoryExhaustedError&) {
        for (std::size_t i = first_load_attempt; i < attempts.size(); ++i) {
          const Attempt& attempt = attempts[i];
          if (attempt.phase == "load" && attempt.outcome == "out_of_memory") {
            record_history(attempt.strategy, RunOutcome::out_of_memory, size, 0.0, nullptr,
                           attempt.detail);
          }
        }
        break;
      }
      index = static_cast<std::size_t>(std::find(order.begin(), order.end(), loaded.strategy) -
                                       order.begin());
      managed_result.load_s += loaded.load_s;
      // Where a threshold crossing or a soft out-of-memory switches to: the next strategy in
      // the order whose planned device peak is lower. Without one, the edit goes on as it is.
      const StrategyPlan* current_plan = find_plan(plans, loaded.strategy.name);
      std::size_t leaner = index + 1;
      while (leaner < order.size() && current_plan != nullptr &&
             find_plan(plans, order[leaner].name)->peak_bytes.at("device") >=
                 current_plan->peak_bytes.at("device")) {
        ++leaner;
      }
      const bool can_switch = config_.fallback_enabled && leaner < order.size();

      EditMemoryOptions memory = working_memory_options(loaded.strategy, {});
      bool reduced = loaded.strategy.chunked_attention && loaded.strategy.tiled_vae;
      int retries = 0;
      std::optional<StrategySwitch> switch_request;
      while (true) {
        std::vector<double> step_times;
        auto monitored = [&](const EditProgress& p) {
          if (progress) {
            progress(p);
          }
          if (profiler_ != nullptr) {
            profiler_->mark_stage(p.stage == "denoising" ? fmt::format("denoising step {}", p.step)
                                                         : p.stage);
          }
          const AllocatorStats stats = allocator.stats();
          if (events_ != nullptr) {
            events_->record(EventType::stage_peak,
                            {{"stage", p.stage},
                             {"step", p.step},
                             {"seconds", p.seconds},
                             {"peak_reserved_bytes", stats.reserved_bytes.peak},
                             {"peak_allocated_bytes", stats.allocated_bytes.peak}});
          }
          if (p.stage != "denoising" || p.step >= p.steps) {
            return;
          }
          // Step boundary: act on the thresholds before memory runs out.
          MemorySnapshot snapshot;
          if (profiler_ != nullptr) {
            snapshot = profiler_->take_snapshot();
          } else {
            snapshot.device_allocated_bytes = stat_bytes(stats.allocated_bytes.current);
            snapshot.device_reserved_bytes = stat_bytes(stats.reserved_bytes.current);
            const std::size_t capacity = allocator.capacity();
            snapshot.device_free_bytes = capacity == kUnlimitedCapacity
                                             ? host_available_bytes()
                                             : (capacity > snapshot.device_reserved_bytes
                                                    ? capacity - snapshot.device_reserved_bytes
                                                    : 0);
          }
          // Cached free blocks are free memory too: the allocator returns them to the system
          // before it refuses a request. Without this, a cache that filled the capacity in an
          // earlier stage would trip the fallback trigger at every step.
          if (snapshot.device_reserved_bytes > snapshot.device_allocated_bytes) {
            snapshot.device_free_bytes +=
                snapshot.device_reserved_bytes - snapshot.device_allocated_bytes;
          }
          const std::string reason = check_thresholds(snapshot);
          if (!reason.empty() && can_switch) {
            throw StrategySwitch{"threshold", reason};
          }
          step_times.push_back(p.seconds);
          if (config_.mode == Mode::adaptive && step_times.size() >= 3) {
            const double typical =
                median(std::vector<double>(step_times.begin(), step_times.end() - 1));
            const bool near_capacity = above_critical_;
            if (p.seconds > kSoftOomSlowdown * typical && near_capacity && can_switch) {
              throw StrategySwitch{
                  "soft_out_of_memory",
                  fmt::format("step {} took {:.2f} s against a median of {:.2f} s with {} in use",
                              p.step, p.seconds, typical,
                              format_mib(snapshot.device_reserved_bytes))};
            }
          }
        };
        try {
          EditResult result = loaded.pipeline->run(request, memory, monitored);
          attempts.push_back({loaded.strategy.name, "edit", "success", "", reduced,
                              reduction > 0 ? std::optional<ImageSize>(size) : std::nullopt});
          managed_result.strategy = loaded.strategy;
          managed_result.computed_size = size;
          managed_result.resolution_reduced = reduction > 0;
          if (managed_result.resolution_reduced) {
            result.image = resize(result.image, managed_result.requested_size.width,
                                  managed_result.requested_size.height, ResampleFilter::kLanczos);
            result.size = managed_result.requested_size;
          }
          record_history(loaded.strategy.name, RunOutcome::success, size, loaded.load_s, &result,
                         "");
          const AllocatorStats stats = allocator.stats();
          managed_result.peak_allocated_bytes = stat_bytes(stats.allocated_bytes.peak);
          managed_result.peak_reserved_bytes = stat_bytes(stats.reserved_bytes.peak);
          managed_result.peak_resident_bytes = read_process_memory().peak_resident_bytes;
          managed_result.result = std::move(result);
          managed_result.total_s = seconds_since(total_start);
          recording.finish(managed_result);
          if (events_ != nullptr) {
            events_->record(EventType::edit,
                            {{"phase", "end"},
                             {"strategy", loaded.strategy.name},
                             {"success", true},
                             {"resolution_reduced", managed_result.resolution_reduced},
                             {"total_s", managed_result.total_s}});
          }
          if (kept != nullptr) {
            *kept = std::move(loaded);
          }
          return managed_result;
        } catch (const StrategySwitch& request_switch) {
          switch_request = request_switch;
        } catch (const std::exception& error) {
          if (!is_oom_error(error)) {
            throw;
          }
          allocator.empty_cache();
          attempts.push_back(
              {loaded.strategy.name, "edit", "out_of_memory", error.what(), reduced, std::nullopt});
          spdlog::warn("the edit with {} ran out of memory: {}", loaded.strategy.name,
                       error.what());
          if (events_ != nullptr) {
            events_->record(EventType::out_of_memory, {{"phase", "edit"},
                                                       {"strategy", loaded.strategy.name},
                                                       {"reduced_working_memory", reduced},
                                                       {"error", error.what()}});
          }
          if (!reduced && retries < config_.oom_retry_attempts) {
            ++retries;
            reduced = true;
            memory = working_memory_options(with_reduced_working_memory(loaded.strategy), memory);
            if (events_ != nullptr) {
              events_->record(EventType::retry,
                              {{"strategy", loaded.strategy.name},
                               {"attention_query_tile", memory.attention_query_tile},
                               {"vae_tiling", memory.vae_tiling},
                               {"vae_tile_px", memory.vae_tile_px}});
            }
            continue;
          }
          record_history(loaded.strategy.name, RunOutcome::out_of_memory, size, loaded.load_s,
                         nullptr, error.what());
        }
        break;
      }

      // Leave this strategy: release its weights before the next one loads.
      loaded.pipeline.reset();
      allocator.empty_cache();
      std::size_t next = index + 1;
      if (switch_request) {
        attempts.push_back({loaded.strategy.name, "edit", switch_request->outcome,
                            switch_request->reason, reduced, std::nullopt});
        spdlog::warn("leaving {}: {}", loaded.strategy.name, switch_request->reason);
        if (switch_request->outcome == "soft_out_of_memory") {
          record_history(loaded.strategy.name, RunOutcome::out_of_memory, size, loaded.load_s,
                         nullptr, switch_request->reason);
        }
        next = leaner;
      }
      if (!config_.fallback_enabled || next >= order.size()) {
        index = order.size();
        break;
      }
      if (events_ != nullptr) {
        events_->record(
            EventType::fallback,
            {{"from", loaded.strategy.name}, {"to", order[next].name}, {"phase", "edit"}});
      }
      index = next;
    }

    const std::optional<ImageSize> smaller =
        config_.allow_resolution_reduction && reduction < kMaxResolutionReductions
            ? reduced_size(size)
            : std::nullopt;
    if (!smaller) {
      break;
    }
    spdlog::warn(
        "no strategy fits {}x{}; retrying at {}x{} with the references scaled alike, upscaled "
        "back afterwards",
        size.width, size.height, smaller->width, smaller->height);
    if (events_ != nullptr) {
      events_->record(EventType::resolution_reduction, {{"from_width", size.width},
                                                        {"from_height", size.height},
                                                        {"to_width", smaller->width},
                                                        {"to_height", smaller->height}});
    }
    size = *smaller;
  }

  // Nothing fitted: say what was tried and what would fit.
  std::string tried;
  for (const Attempt& attempt : attempts) {
    tried += fmt::format("\n  - {} ({}): {}{}", attempt.strategy, attempt.phase, attempt.outcome,
                         attempt.reduced_working_memory ? " with reduced working memory" : "");
  }
  const TierBudget tier_budget = budget();
  const auto leanest_plan = [](const std::vector<StrategyPlan>& plans) {
    const StrategyPlan* closest = nullptr;
    for (const StrategyPlan& plan : plans) {
      if (closest == nullptr || plan.shortfall_bytes < closest->shortfall_bytes) {
        closest = &plan;
      }
    }
    return closest;
  };
  std::string advice;
  if (const StrategyPlan* closest = leanest_plan(managed_result.plans)) {
    advice = fmt::format(
        "\nThe leanest plan, {}, needs about {} at {}x{}; {} are available{}.",
        closest->strategy.name, format_mib(tier_budget.device_bytes + closest->shortfall_bytes),
        managed_result.requested_size.width, managed_result.requested_size.height,
        format_mib(tier_budget.device_bytes),
        closest->shortfall_bytes > 0
            ? fmt::format(", so it needs {} more (raise --memory-limit, free memory, or pass a "
                          "smaller --width/--height)",
                          format_mib(closest->shortfall_bytes))
            : "");
  }
  // The need at the smallest size tried shows how much a lower resolution helps. The text
  // encoder's share does not shrink with the output.
  const StrategyPlan* smallest = leanest_plan(last_plans);
  if (smallest != nullptr && last_size != managed_result.requested_size) {
    advice += fmt::format(" At {}x{}, the smallest size tried, {} needs about {}.", last_size.width,
                          last_size.height, smallest->strategy.name,
                          format_mib(tier_budget.device_bytes + smallest->shortfall_bytes));
  }
  if (events_ != nullptr) {
    events_->record(EventType::edit, {{"phase", "end"}, {"success", false}});
  }
  const std::string what =
      attempts.empty()
          ? fmt::format(
                "the edit did not fit in memory: no strategy's plan fits in {} at {}x{}{}, "
                "so none was run.",
                format_mib(tier_budget.device_bytes), managed_result.requested_size.width,
                managed_result.requested_size.height,
                last_size != managed_result.requested_size ? " or at a lower resolution" : "")
          : fmt::format("the edit did not fit in memory after every fallback. Tried:{}", tried);
  throw MemoryExhaustedError(what + advice, attempts);
}

}  // namespace ethereal::memory
