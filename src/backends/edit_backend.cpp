#include "backends/edit_backend.h"

#include <unistd.h>

#include <chrono>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "io/image_file.h"
#include "io/model_directory.h"
#include "memory/paths.h"
#include "memory/run_log.h"
#include "memory/timeline_svg.h"
#include "memory/timestamp.h"
#include "models/tiny_model.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "runtime/system_memory.h"

namespace ethereal {
namespace {

std::vector<std::string> optimizations_of(const memory::LoadStrategy& strategy,
                                          const std::vector<memory::Attempt>& attempts) {
  std::vector<std::string> applied;
  if (strategy.weight_format) {
    applied.push_back(strategy.weight_format_name() + " weights");
  }
  if (strategy.placement != Placement::resident) {
    applied.push_back(std::string(placement_name(strategy.placement)));
  }
  for (const memory::Attempt& attempt : attempts) {
    if (attempt.outcome == "success" && attempt.phase == "edit" && attempt.reduced_working_memory) {
      applied.push_back("attention in query tiles and tiled VAE");
    }
  }
  return applied;
}

std::vector<std::string> fallbacks_of(const std::vector<memory::Attempt>& attempts) {
  std::vector<std::string> lines;
  for (const memory::Attempt& attempt : attempts) {
    if (attempt.outcome != "success") {
      lines.push_back(
          fmt::format("{} ({}): {}{}", attempt.strategy, attempt.phase, attempt.outcome,
                      attempt.reduced_working_memory ? ", reduced working memory" : ""));
    }
  }
  return lines;
}

}  // namespace

nlohmann::json BackendLoadReport::to_json() const {
  nlohmann::json json = {{"success", success},
                         {"strategy", strategy},
                         {"load_s", load_s},
                         {"recommended", recommended},
                         {"attempts", nlohmann::json::array()},
                         {"error", error}};
  for (const memory::Attempt& attempt : attempts) {
    json["attempts"].push_back(attempt.to_json());
  }
  return json;
}

nlohmann::json BackendEditResult::to_json() const {
  const EditResult& result = report.result;
  nlohmann::json fallbacks = nlohmann::json::array();
  nlohmann::json retries = nlohmann::json::array();
  nlohmann::json attempts = nlohmann::json::array();
  const std::vector<memory::Attempt>& all = report.attempts;
  for (std::size_t i = 0; i < all.size(); ++i) {
    const memory::Attempt& attempt = all[i];
    attempts.push_back(attempt.to_json());
    // An edit that ran out of memory and was run again with the same strategy (with reduced
    // working memory) is a retry; any other failure left the strategy.
    const bool retried = i + 1 < all.size() && all[i + 1].strategy == attempt.strategy &&
                         all[i + 1].phase == "edit" && all[i + 1].reduced_working_memory;
    if (attempt.phase == "edit" && attempt.outcome == "out_of_memory" && retried) {
      retries.push_back(attempt.to_json());
    } else if (attempt.outcome != "success") {
      fallbacks.push_back(attempt.to_json());
    }
  }
  nlohmann::json plans = nlohmann::json::array();
  for (const memory::StrategyPlan& plan : report.plans) {
    plans.push_back({{"strategy", plan.strategy.name},
                     {"fits", plan.fits},
                     {"device_peak_bytes", plan.peak_bytes.at("device")},
                     {"host_peak_bytes", plan.peak_bytes.at("host")},
                     {"reason", plan.reason}});
  }
  return {{"strategy", report.strategy.name},
          {"weight_format", report.strategy.weight_format_name()},
          {"placement", placement_name(report.strategy.placement)},
          {"fallbacks", fallbacks},
          {"retries", retries},
          {"attempts", attempts},
          {"plans", plans},
          {"recommended", report.recommended},
          {"resolution_reduced", report.resolution_reduced},
          {"requested_width", report.requested_size.width},
          {"requested_height", report.requested_size.height},
          {"computed_width", report.computed_size.width},
          {"computed_height", report.computed_size.height},
          {"steps", result.steps},
          {"prompt_tokens", result.prompt_tokens},
          {"image_tokens", result.image_tokens},
          {"load_s", report.load_s},
          {"total_s", report.total_s},
          {"stage_times_s",
           {{"text_encoding", result.text_encoding_s},
            {"vae_encode", result.vae_encode_s},
            {"denoising", result.denoising_s},
            {"vae_decode", result.vae_decode_s}}},
          {"step_times_s", result.step_s},
          {"peak_allocated_bytes", report.peak_allocated_bytes},
          {"peak_reserved_bytes", report.peak_reserved_bytes},
          {"peak_resident_bytes", report.peak_resident_bytes},
          {"log_files",
           {{"events", events_path.string()},
            {"timeline", timeline_path.string()},
            {"markdown", markdown_path.string()}}}};
}

EnhancedImageEditBackend::EnhancedImageEditBackend(BackendOptions options)
    : options_(std::move(options)) {
  if (options_.config_file) {
    config_ = memory::load_memory_config(*options_.config_file);
  }
  if (options_.mode) {
    config_.mode = *options_.mode;
  }
  if (options_.log_dir) {
    config_.log_dir = *options_.log_dir;
  }
  if (options_.history_db) {
    config_.history_db = *options_.history_db;
  }
  if (!options_.preferred_strategies.empty()) {
    config_.preferred_strategies = options_.preferred_strategies;
  }
  if (!options_.first_strategy.empty()) {
    const memory::LoadStrategy first = memory::parse_strategy(options_.first_strategy);
    std::vector<std::string>& preferred = config_.preferred_strategies;
    if (std::find(preferred.begin(), preferred.end(), first.name) == preferred.end()) {
      preferred.insert(preferred.begin(), first.name);
    }
  }
  options_.pipeline.kept_blocks = config_.kept_blocks;
  // Validates every name before any work.
  (void)candidates();

  model_path_ = options_.model.empty() ? default_model_directory() : options_.model;
  model_label_ = options_.model.empty() ? std::string("tiny-default")
                                        : std::filesystem::weakly_canonical(model_path_).string();
  if (options_.memory_limit_bytes) {
    Allocator& allocator = current_allocator(Device::cpu());
    previous_capacity_ = allocator.capacity();
    allocator.set_capacity(*options_.memory_limit_bytes);
  }
  if (options_.use_history) {
    try {
      history_ =
          std::make_unique<memory::HistoryStore>(memory::HistoryStore::open(config_.history_db));
    } catch (const std::exception& error) {
      // The history only improves choices; an unusable database must not stop an edit.
      spdlog::warn("history disabled: {}", error.what());
    }
  }
  if (config_.profiling_enabled) {
    profiler_ = std::make_unique<memory::MemoryProfiler>(Device::cpu());
  }
  manager_ = std::make_unique<memory::MemoryManager>(
      config_, memory::assess_this_machine(options_.memory_limit_bytes), nullptr, history_.get(),
      profiler_.get());
  manager_->set_first_strategy(options_.first_strategy);
}

EnhancedImageEditBackend::~EnhancedImageEditBackend() {
  loaded_.pipeline.reset();
  if (previous_capacity_) {
    current_allocator(Device::cpu()).set_capacity(*previous_capacity_);
  }
}

const memory::HardwareAssessment& EnhancedImageEditBackend::hardware() const {
  return manager_->hardware();
}

memory::MemoryManager& EnhancedImageEditBackend::manager() {
  return *manager_;
}

std::vector<memory::LoadStrategy> EnhancedImageEditBackend::candidates() const {
  std::vector<memory::LoadStrategy> strategies;
  for (const std::string& name : config_.preferred_strategies) {
    memory::LoadStrategy strategy = memory::parse_strategy(name);
    if (std::find(strategies.begin(), strategies.end(), strategy) == strategies.end()) {
      strategies.push_back(std::move(strategy));
    }
  }
  if (strategies.empty()) {
    throw InvalidInputError("the list of preferred strategies is empty; name at least one of " +
                            memory::standard_strategy_names());
  }
  return strategies;
}

std::string EnhancedImageEditBackend::next_run_id(const char* kind) {
  std::string stamp = memory::utc_timestamp_now();
  for (char& c : stamp) {
    if (c == ':') {
      c = '-';
    }
  }
  return fmt::format("{}-{}-{}-{}", stamp, kind, static_cast<long>(::getpid()), ++run_counter_);
}

BackendLoadReport EnhancedImageEditBackend::load() {
  BackendLoadReport report;
  const ModelDirectory model = ModelDirectory::open(model_path_);
  std::unique_ptr<memory::RunLogWriter> log;
  if (options_.write_logs) {
    log = std::make_unique<memory::RunLogWriter>(config_.log_dir, next_run_id("load"));
    manager_->set_event_log(&log->events());
  }
  const memory::Planner planner(model, options_.pipeline);
  const memory::PlanRequest request;
  report.plans = planner.plan_all(candidates(), request, manager_->budget());
  report.recommended =
      manager_->get_recommended_strategy(report.plans, model_label_, request.image_sizes.back());
  std::vector<memory::LoadStrategy> order;
  for (const std::string& name : report.recommended) {
    order.push_back(memory::parse_strategy(name));
  }
  loaded_.pipeline.reset();
  current_allocator(Device::cpu()).empty_cache();
  try {
    if (order.empty()) {
      throw memory::MemoryExhaustedError("no strategy fits a 1024x1024 edit", {});
    }
    loaded_ = manager_->load_model_with_fallback(model, order, options_.pipeline, report.attempts);
    report.success = true;
    report.strategy = loaded_.strategy.name;
    report.load_s = loaded_.load_s;
  } catch (const memory::MemoryExhaustedError& error) {
    report.error = error.what();
  }
  if (log) {
    memory::RunLogEntry entry;
    entry.kind = memory::RunKind::load;
    entry.timestamp_utc = memory::utc_timestamp_now();
    entry.strategy = report.success ? report.strategy : "none";
    entry.device = manager_->hardware().device;
    entry.available_device_bytes = manager_->hardware().device_available_bytes;
    entry.available_host_bytes = manager_->hardware().host_available_bytes;
    entry.duration_s = report.load_s;
    const AllocatorStats stats = current_allocator(Device::cpu()).stats();
    entry.peak_device_bytes = static_cast<std::uint64_t>(stats.reserved_bytes.peak);
    entry.peak_host_bytes = read_process_memory().peak_resident_bytes;
    entry.success = report.success;
    if (report.success) {
      entry.optimizations = optimizations_of(loaded_.strategy, report.attempts);
    }
    entry.fallbacks = fallbacks_of(report.attempts);
    entry.error = report.error;
    log->append_entry(entry);
    manager_->set_event_log(nullptr);
  }
  return report;
}

BackendEditResult EnhancedImageEditBackend::edit(
    const std::string& prompt, const std::vector<std::filesystem::path>& image_paths,
    const BackendEditOptions& options, const EditProgressCallback& progress) {
  std::vector<Image> images;
  for (const std::filesystem::path& path : image_paths) {
    images.push_back(read_image(path));
  }
  return edit(prompt, images, options, progress);
}

BackendEditResult EnhancedImageEditBackend::edit(const std::string& prompt,
                                                 const std::vector<Image>& images,
                                                 const BackendEditOptions& options,
                                                 const EditProgressCallback& progress) {
  memory::ManagedEditRequest request;
  request.model_label = model_label_;
  request.edit.images = images;
  request.edit.prompt = prompt;
  request.edit.negative_prompt = options.negative_prompt;
  request.edit.steps = options.steps;
  request.edit.cfg_scale = options.cfg_scale;
  request.edit.seed = options.seed;
  request.edit.initial_noise = options.initial_noise;
  request.edit.output_size = options.output_size;
  request.edit.scheduler = options.scheduler;
  validate_edit_request(request.edit);
  const ModelDirectory model = ModelDirectory::open(model_path_);

  BackendEditResult out;
  std::unique_ptr<memory::RunLogWriter> log;
  if (options_.write_logs) {
    log = std::make_unique<memory::RunLogWriter>(config_.log_dir, next_run_id("edit"));
    manager_->set_event_log(&log->events());
    out.events_path = log->events_path();
    out.timeline_path = log->timeline_path();
    out.markdown_path = log->markdown_path();
  }
  // The manager samples memory with profiler_ during the edit (not while it plans).
  const auto origin = std::chrono::system_clock::now();
  std::string error_text;
  bool success = false;
  try {
    out.report =
        manager_->edit(model, request, options_.pipeline, candidates(), progress, &loaded_);
    success = true;
  } catch (const std::exception& error) {
    error_text = error.what();
    if (log) {
      memory::RunLogEntry entry;
      entry.kind = memory::RunKind::edit;
      entry.timestamp_utc = memory::utc_timestamp_now();
      entry.strategy = "none";
      entry.device = manager_->hardware().device;
      entry.available_device_bytes = manager_->hardware().device_available_bytes;
      entry.available_host_bytes = manager_->hardware().host_available_bytes;
      entry.success = false;
      entry.error = error_text;
      if (const auto* exhausted = dynamic_cast<const memory::MemoryExhaustedError*>(&error)) {
        entry.fallbacks = fallbacks_of(exhausted->attempts());
      }
      log->append_entry(entry);
      manager_->set_event_log(nullptr);
    }
    throw;
  }
  if (log) {
    const double origin_s = std::chrono::duration<double>(origin.time_since_epoch()).count();
    std::vector<memory::TimelineSample> samples;
    std::vector<memory::TimelineMark> marks;
    for (const memory::MemorySnapshot& snapshot : out.report.samples) {
      if (snapshot.timestamp < origin_s) {
        continue;
      }
      samples.push_back({snapshot.timestamp - origin_s, snapshot.device_allocated_bytes,
                         snapshot.device_reserved_bytes, snapshot.process_rss_bytes});
    }
    for (const memory::StageMark& mark : out.report.marks) {
      if (mark.timestamp >= origin_s) {
        marks.push_back({mark.timestamp - origin_s, mark.name});
      }
    }
    log->write_timeline(samples, marks, options_.memory_limit_bytes,
                        fmt::format("ethereal edit, {}", out.report.strategy.name));
    memory::RunLogEntry entry;
    entry.kind = memory::RunKind::edit;
    entry.timestamp_utc = memory::utc_timestamp_now();
    entry.strategy = out.report.strategy.name;
    entry.device = manager_->hardware().device;
    entry.available_device_bytes = manager_->hardware().device_available_bytes;
    entry.available_host_bytes = manager_->hardware().host_available_bytes;
    entry.duration_s = out.report.total_s;
    entry.peak_device_bytes = out.report.peak_reserved_bytes;
    entry.peak_host_bytes = out.report.peak_resident_bytes;
    entry.success = success;
    entry.optimizations = optimizations_of(out.report.strategy, out.report.attempts);
    if (out.report.resolution_reduced) {
      entry.optimizations.push_back(
          fmt::format("computed at {}x{}, upscaled to the requested {}x{}",
                      out.report.computed_size.width, out.report.computed_size.height,
                      out.report.requested_size.width, out.report.requested_size.height));
    }
    entry.fallbacks = fallbacks_of(out.report.attempts);
    const EditResult& result = out.report.result;
    entry.stage_s = {{"load", out.report.load_s},
                     {"text_encoding", result.text_encoding_s},
                     {"vae_encode", result.vae_encode_s},
                     {"denoising", result.denoising_s},
                     {"vae_decode", result.vae_decode_s}};
    log->append_entry(entry);
    manager_->set_event_log(nullptr);
  }
  out.image = out.report.result.image;
  return out;
}

}  // namespace ethereal
