#include "memory/config.h"

#include <gtest/gtest.h>
#include <pwd.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "memory_test_support.h"
#include "runtime/error.h"

namespace ethereal::memory {
namespace {

using testing::error_message;
using testing::ScopedEnvironment;
using testing::TemporaryDirectory;

constexpr const char* kSource = "test-config.yaml";

std::string parse_error(const std::string& yaml) {
  return error_message<InvalidInputError>([&] { parse_memory_config(yaml, kSource); });
}

void expect_contains(const std::string& text, const std::string& fragment) {
  EXPECT_NE(text.find(fragment), std::string::npos) << "'" << fragment << "' is not in: " << text;
}

TEST(MemoryConfig, Defaults) {
  ScopedEnvironment home("HOME", "/home/tester");
  const MemoryConfig config = parse_memory_config("", kSource);
  EXPECT_EQ(config.preferred_strategies,
            (std::vector<std::string>{"fp16_full", "fp8_optimized", "nf4_quantized", "cpu_offload",
                                      "sequential_offload"}));
  EXPECT_TRUE(config.fallback_enabled);
  EXPECT_EQ(config.oom_retry_attempts, 3);
  EXPECT_EQ(config.memory_threshold_mb, 2000u);
  EXPECT_EQ(config.warning_threshold_mb, 16000u);
  EXPECT_EQ(config.critical_threshold_mb, 22000u);
  EXPECT_EQ(config.fallback_trigger_threshold_mb, 2000u);
  EXPECT_TRUE(config.allow_resolution_reduction);
  EXPECT_EQ(config.mode, Mode::adaptive);
  EXPECT_TRUE(config.profiling_enabled);
  EXPECT_EQ(config.log_dir, "/home/tester/.cache/ethereal/logs");
  EXPECT_EQ(config.history_db, "/home/tester/.cache/ethereal/history.sqlite");
  EXPECT_EQ(config.kept_blocks, 2);
  EXPECT_EQ(config.sampling_interval_ms, 50);
  EXPECT_EQ(config.memory_threshold_bytes(), 2000ull << 20);

  EXPECT_EQ(parse_memory_config("memory_management:\n", kSource).kept_blocks, 2);
  EXPECT_EQ(parse_memory_config("memory_management: {}\n", kSource).mode, Mode::adaptive);
}

TEST(MemoryConfig, FullFile) {
  ScopedEnvironment home("HOME", "/home/tester");
  TemporaryDirectory directory;
  const std::filesystem::path file = directory / "config.yaml";
  std::ofstream(file) << R"(memory_management:
  preferred_strategies: [nf4_quantized, sequential_offload]
  fallback_enabled: false
  oom_retry_attempts: 5
  memory_threshold_mb: 1024
  warning_threshold_mb: 8000
  critical_threshold_mb: 9000
  fallback_trigger_threshold_mb: 512
  allow_resolution_reduction: no
  mode: memory
  profiling_enabled: false
  log_dir: ~/logs
  history_db: /var/lib/ethereal/history.sqlite
  kept_blocks: 4
  sampling_interval_ms: 20
)";
  const MemoryConfig config = load_memory_config(file);
  EXPECT_EQ(config.preferred_strategies,
            (std::vector<std::string>{"nf4_quantized", "sequential_offload"}));
  EXPECT_FALSE(config.fallback_enabled);
  EXPECT_EQ(config.oom_retry_attempts, 5);
  EXPECT_EQ(config.memory_threshold_mb, 1024u);
  EXPECT_EQ(config.memory_threshold_bytes(), 1024ull << 20);
  EXPECT_EQ(config.warning_threshold_mb, 8000u);
  EXPECT_EQ(config.critical_threshold_mb, 9000u);
  EXPECT_EQ(config.fallback_trigger_threshold_mb, 512u);
  EXPECT_FALSE(config.allow_resolution_reduction);
  EXPECT_EQ(config.mode, Mode::memory);
  EXPECT_FALSE(config.profiling_enabled);
  EXPECT_EQ(config.log_dir, "/home/tester/logs");
  EXPECT_EQ(config.history_db, "/var/lib/ethereal/history.sqlite");
  EXPECT_EQ(config.kept_blocks, 4);
  EXPECT_EQ(config.sampling_interval_ms, 20);
}

TEST(MemoryConfig, WrongTypesNameKeyAndFile) {
  struct Case {
    std::string key;
    std::string value;
    std::string fragment;
  };
  const std::vector<Case> cases = {
      {"preferred_strategies", "fp16_full", "expected a list"},
      {"preferred_strategies", "{a: 1}", "expected a list"},
      {"fallback_enabled", "3", "expected true or false"},
      {"fallback_enabled", "\"true\"", "quoted string"},
      {"fallback_enabled", "~", "null"},
      {"oom_retry_attempts", "three", "expected a whole number"},
      {"oom_retry_attempts", "1.5", "expected a whole number"},
      {"oom_retry_attempts", "\"3\"", "quoted string"},
      {"oom_retry_attempts", "-1", "must not be negative"},
      {"memory_threshold_mb", "[1]", "a list"},
      {"warning_threshold_mb", "true", "expected a whole number"},
      {"critical_threshold_mb", "99999999999999999999", "too large"},
      {"fallback_trigger_threshold_mb", "2GiB", "expected a whole number"},
      {"allow_resolution_reduction", "maybe", "expected true or false"},
      {"mode", "[adaptive]", "expected a string"},
      {"profiling_enabled", "{}", "a mapping"},
      {"log_dir", "[a, b]", "expected a string"},
      {"history_db", "\"\"", "empty"},
      {"kept_blocks", "0", "at least 1"},
      {"kept_blocks", "two", "expected a whole number"},
      {"sampling_interval_ms", "0", "at least 1"},
  };
  for (const Case& c : cases) {
    const std::string message = parse_error("memory_management:\n  " + c.key + ": " + c.value);
    SCOPED_TRACE(c.key + ": " + c.value);
    expect_contains(message, std::string(kSource) + ":2");
    expect_contains(message, "memory_management." + c.key);
    expect_contains(message, c.fragment);
  }
}

TEST(MemoryConfig, SectionOfWrongType) {
  const std::string message = parse_error("memory_management: [1, 2]\n");
  expect_contains(message, "memory_management");
  expect_contains(message, "expected a mapping");
  expect_contains(parse_error("- a\n- b\n"), "expected a mapping");
}

TEST(MemoryConfig, UnknownKeys) {
  const std::string top = parse_error("memory_managment:\n  mode: memory\n");
  expect_contains(top, kSource);
  expect_contains(top, "memory_managment: unknown key");
  expect_contains(top, "memory_management");

  const std::string nested = parse_error("memory_management:\n  mode: memory\n  fallback: true\n");
  expect_contains(nested, std::string(kSource) + ":3");
  expect_contains(nested, "memory_management.fallback: unknown key");
  expect_contains(nested, "fallback_enabled");
}

TEST(MemoryConfig, DuplicateKey) {
  const std::string message = parse_error("memory_management:\n  mode: memory\n  mode: quality\n");
  expect_contains(message, "memory_management.mode");
  expect_contains(message, "twice");
}

TEST(MemoryConfig, UnknownStrategy) {
  const std::string message =
      parse_error("memory_management:\n  preferred_strategies: [fp16_full, turbo]\n");
  expect_contains(message, "memory_management.preferred_strategies[1]");
  expect_contains(message, "'turbo'");
  expect_contains(message,
                  "fp16_full, fp8_optimized, nf4_quantized, cpu_offload, sequential_offload");

  expect_contains(parse_error("memory_management:\n  preferred_strategies: []\n"), "empty");
  expect_contains(
      parse_error("memory_management:\n  preferred_strategies: [cpu_offload, cpu_offload]\n"),
      "listed twice");
}

TEST(MemoryConfig, UnknownMode) {
  const std::string message = parse_error("memory_management:\n  mode: fast\n");
  expect_contains(message, "memory_management.mode");
  expect_contains(message, "'fast'");
  expect_contains(message, "adaptive, performance, memory, quality");
}

TEST(MemoryConfig, WarningAboveCritical) {
  const std::string message = parse_error(
      "memory_management:\n  warning_threshold_mb: 30000\n  critical_threshold_mb: 20000\n");
  expect_contains(message, "memory_management.warning_threshold_mb");
  expect_contains(message, "critical_threshold_mb");
}

TEST(MemoryConfig, InvalidYaml) {
  const std::string message = parse_error("memory_management:\n  mode: [adaptive\n");
  expect_contains(message, kSource);
  expect_contains(message, "invalid YAML");
}

TEST(MemoryConfig, MissingFile) {
  TemporaryDirectory directory;
  const std::filesystem::path file = directory / "absent.yaml";
  const std::string message = error_message<InvalidInputError>([&] { load_memory_config(file); });
  expect_contains(message, file.string());
  expect_contains(error_message<InvalidInputError>([&] { load_memory_config(directory.path()); }),
                  "is a directory");
}

TEST(MemoryConfig, ErrorsNameTheFile) {
  TemporaryDirectory directory;
  const std::filesystem::path file = directory / "bad.yaml";
  std::ofstream(file) << "memory_management:\n  oom_retry_attempts: many\n";
  const std::string message = error_message<InvalidInputError>([&] { load_memory_config(file); });
  expect_contains(message, file.string() + ":2");
  expect_contains(message, "memory_management.oom_retry_attempts");
}

TEST(ExpandHome, ReplacesLeadingTilde) {
  ScopedEnvironment home("HOME", "/home/tester");
  EXPECT_EQ(expand_home("~"), "/home/tester");
  EXPECT_EQ(expand_home("~/"), "/home/tester");
  EXPECT_EQ(expand_home("~/a/b.sqlite"), "/home/tester/a/b.sqlite");
  EXPECT_EQ(expand_home("/var/~/x"), "/var/~/x");
  EXPECT_EQ(expand_home("relative/~"), "relative/~");
  expect_contains(error_message<InvalidInputError>([] { expand_home("~bob/logs"); }),
                  "~user form is not supported");
  expect_contains(parse_error("memory_management:\n  log_dir: ~bob/logs\n"),
                  "memory_management.log_dir");
}

TEST(ExpandHome, FallsBackToPasswordEntry) {
  ScopedEnvironment home("HOME", "");
  const passwd* entry = ::getpwuid(::getuid());
  if (entry == nullptr || entry->pw_dir == nullptr || *entry->pw_dir == '\0') {
    expect_contains(error_message<InvalidInputError>([] { expand_home("~/logs"); }),
                    "no home directory");
    return;
  }
  EXPECT_EQ(expand_home("~/logs"), std::filesystem::path(entry->pw_dir) / "logs");
}

TEST(Strategies, NamesAndModes) {
  EXPECT_TRUE(is_strategy_name("cpu_offload"));
  EXPECT_FALSE(is_strategy_name("CPU_OFFLOAD"));
  EXPECT_NO_THROW(check_strategy_name("nf4_quantized", "--strategy"));
  const std::string message =
      error_message<InvalidInputError>([] { check_strategy_name("int4", "--strategy"); });
  expect_contains(message, "--strategy");
  expect_contains(message, "'int4'");
  expect_contains(message, strategy_name_list());

  for (const Mode mode : {Mode::adaptive, Mode::performance, Mode::memory, Mode::quality}) {
    EXPECT_EQ(parse_mode(mode_name(mode)), mode);
  }
  EXPECT_EQ(mode_name(Mode::quality), "quality");
  expect_contains(error_message<InvalidInputError>([] { parse_mode("Adaptive"); }), "valid modes");
}

}  // namespace
}  // namespace ethereal::memory
