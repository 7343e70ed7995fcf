// EnhancedImageEditBackend: the API an application uses to edit images without running out of
// memory. It reads the configuration, assesses the hardware, picks a load strategy from dry-run
// plans, loads with fallback, runs each edit under the memory manager's monitoring and
// recovery, and writes the logs and the history. `ethereal edit` goes through it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/image.h"
#include "memory/config.h"
#include "memory/manager.h"
#include "pipeline/edit_pipeline.h"

namespace ethereal {

struct BackendOptions {
  // Diffusers model directory; empty selects the tiny default model.
  std::filesystem::path model;
  // Restricts and orders the candidate strategies (names as parse_strategy accepts); empty
  // keeps the configuration's list.
  std::vector<std::string> preferred_strategies;
  // A strategy tried first whatever the mode (an explicit --strategy); added to the candidates
  // when the preference list lacks it. Empty: automatic.
  std::string first_strategy;
  // YAML configuration file; its settings apply first, the options below override them.
  std::optional<std::filesystem::path> config_file;
  std::optional<memory::Mode> mode;
  // Caps the device allocator (the device is process memory on the CPU backend).
  std::optional<std::uint64_t> memory_limit_bytes;
  std::optional<std::filesystem::path> log_dir;
  std::optional<std::filesystem::path> history_db;
  // Turn off the log files or the history database (tests, planning tools).
  bool write_logs = true;
  bool use_history = true;
  // Precision and LoRAs; each strategy sets the weight format and placement.
  PipelineLoadOptions pipeline;
};

// The outcome of load().
struct BackendLoadReport {
  bool success = false;
  std::string strategy;
  double load_s = 0.0;
  std::vector<memory::StrategyPlan> plans;
  std::vector<std::string> recommended;
  std::vector<memory::Attempt> attempts;
  std::string error;

  nlohmann::json to_json() const;
};

struct BackendEditOptions {
  std::string negative_prompt = " ";
  int steps = 40;
  double cfg_scale = 4.0;
  std::uint64_t seed = 0;
  std::optional<std::filesystem::path> initial_noise;
  std::optional<ImageSize> output_size;
  // Replaces the model's scheduler (set by the Lightning recipe).
  std::optional<FlowMatchSchedulerConfig> scheduler;
};

struct BackendEditResult {
  Image image;
  memory::ManagedEditResult report;
  // Log files of this edit (empty when logs are off).
  std::filesystem::path events_path;
  std::filesystem::path timeline_path;
  std::filesystem::path markdown_path;

  // strategy, fallbacks, retries, peaks, stage times and log paths.
  nlohmann::json to_json() const;
};

class EnhancedImageEditBackend {
 public:
  // Reads the configuration and assesses the hardware; loads nothing. Throws InvalidInputError
  // for a bad configuration file or option.
  explicit EnhancedImageEditBackend(BackendOptions options = {});
  ~EnhancedImageEditBackend();
  EnhancedImageEditBackend(const EnhancedImageEditBackend&) = delete;
  EnhancedImageEditBackend& operator=(const EnhancedImageEditBackend&) = delete;

  // Plans the candidates for a 1024x1024 edit of one image and loads the best that fits, with
  // fallback. Returns success and the loading configuration; never throws for out-of-memory.
  BackendLoadReport load();

  // Edits: plans for this request, reuses the loaded model when its strategy is still the
  // best, and recovers from out-of-memory (see memory/manager.h). Throws InvalidInputError for
  // bad input and memory::MemoryExhaustedError when nothing fits.
  BackendEditResult edit(const std::string& prompt,
                         const std::vector<std::filesystem::path>& image_paths,
                         const BackendEditOptions& options = {},
                         const EditProgressCallback& progress = {});
  // The same with images already in memory.
  BackendEditResult edit(const std::string& prompt, const std::vector<Image>& images,
                         const BackendEditOptions& options = {},
                         const EditProgressCallback& progress = {});

  const memory::MemoryConfig& config() const { return config_; }
  const memory::HardwareAssessment& hardware() const;
  memory::MemoryManager& manager();
  // The model directory's path and the label used in the history.
  const std::filesystem::path& model_path() const { return model_path_; }
  const std::string& model_label() const { return model_label_; }
  std::vector<memory::LoadStrategy> candidates() const;

 private:
  std::string next_run_id(const char* kind);

  BackendOptions options_;
  memory::MemoryConfig config_;
  std::filesystem::path model_path_;
  std::string model_label_;
  std::optional<std::size_t> previous_capacity_;
  std::unique_ptr<memory::HistoryStore> history_;
  std::unique_ptr<memory::MemoryProfiler> profiler_;
  std::unique_ptr<memory::MemoryManager> manager_;
  memory::MemoryManager::Loaded loaded_;
  int run_counter_ = 0;
};

}  // namespace ethereal
