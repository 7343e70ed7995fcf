// The memory management settings of the YAML configuration file:
//
//   memory_management:
//     preferred_strategies: [fp16_full, fp8_optimized, nf4_quantized, cpu_offload,
//                            sequential_offload]
//     fallback_enabled: true
//     oom_retry_attempts: 3
//     memory_threshold_mb: 2000          # safety margin kept free on each tier
//     warning_threshold_mb: 16000
//     critical_threshold_mb: 22000
//     fallback_trigger_threshold_mb: 2000
//     allow_resolution_reduction: true
//     mode: adaptive
//     profiling_enabled: true
//     log_dir: ~/.cache/ethereal/logs
//     history_db: ~/.cache/ethereal/history.sqlite
//     kept_blocks: 2                     # blocks on the device at once in sequential offload
//     sampling_interval_ms: 50           # period of the memory sampler
//
// Every key is optional and defaults to the value shown. Sizes in "_mb" keys are MiB. A
// leading "~" in a path is the user's home directory. The parser is strict. An unknown key, a
// duplicated key, a value of the wrong type (a quoted "3" is a string, not a number), a value
// out of range, and an unknown strategy or mode are each an InvalidInputError. The error names
// the file, the line where known and the key path (for example "memory_management.mode").
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace ethereal::memory {

// The loading strategies, in the default order of preference.
inline constexpr std::array<std::string_view, 5> kStrategyNames = {
    "fp16_full", "fp8_optimized", "nf4_quantized", "cpu_offload", "sequential_offload"};

bool is_strategy_name(std::string_view name);
// Throws InvalidInputError naming `name`, `context` (a key or option) and the valid names
// unless `name` is one of kStrategyNames.
void check_strategy_name(std::string_view name, std::string_view context);
// "fp16_full, fp8_optimized, ..." for messages.
std::string strategy_name_list();

// The ranking rule of the recommendation among the strategies that fit: fastest, lowest peak,
// highest precision, or the recorded history of this hardware and model.
enum class Mode { adaptive, performance, memory, quality };

std::string_view mode_name(Mode mode);
// Throws InvalidInputError naming `text` and the valid modes.
Mode parse_mode(std::string_view text);

// Replaces a leading "~" or "~/" with the home directory ($HOME, or the password database
// entry of the user when HOME is unset or empty). Other paths are returned unchanged. Throws
// InvalidInputError for the "~user" form, which is not supported, and when no home directory
// is known.
std::filesystem::path expand_home(std::string_view path);

struct MemoryConfig {
  std::vector<std::string> preferred_strategies{kStrategyNames.begin(), kStrategyNames.end()};
  bool fallback_enabled = true;
  int oom_retry_attempts = 3;
  std::uint64_t memory_threshold_mb = 2000;
  std::uint64_t warning_threshold_mb = 16000;
  std::uint64_t critical_threshold_mb = 22000;
  std::uint64_t fallback_trigger_threshold_mb = 2000;
  bool allow_resolution_reduction = true;
  Mode mode = Mode::adaptive;
  bool profiling_enabled = true;
  // Expanded at construction, so constructing a MemoryConfig throws when no home directory
  // is known (see expand_home).
  std::filesystem::path log_dir = expand_home("~/.cache/ethereal/logs");
  std::filesystem::path history_db = expand_home("~/.cache/ethereal/history.sqlite");
  int kept_blocks = 2;
  int sampling_interval_ms = 50;

  std::uint64_t memory_threshold_bytes() const { return memory_threshold_mb << 20; }
  std::uint64_t warning_threshold_bytes() const { return warning_threshold_mb << 20; }
  std::uint64_t critical_threshold_bytes() const { return critical_threshold_mb << 20; }
  std::uint64_t fallback_trigger_threshold_bytes() const {
    return fallback_trigger_threshold_mb << 20;
  }
};

// Reads a configuration file. A missing file, a YAML syntax error and every invalid key or
// value are InvalidInputError naming the file. An empty file, or one without a
// memory_management section, gives the defaults.
MemoryConfig load_memory_config(const std::filesystem::path& file);
// The same for YAML text; `source` names it in messages.
MemoryConfig parse_memory_config(std::string_view yaml_text, const std::string& source);

}  // namespace ethereal::memory
