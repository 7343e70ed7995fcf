// EnhancedImageEditBackend: configuration errors, the log files of an edit, the memory limit's
// lifetime, and a clean failure when nothing fits.
#include "backends/edit_backend.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "manager/manager_test_support.h"
#include "memory/config.h"
#include "memory/manager.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "support/errors.h"

namespace ethereal::manager_test {
namespace {

// Options for the tiny model with logs and history in `folder`.
BackendOptions options_in(const TemporaryDirectory& folder) {
  BackendOptions options;
  options.model = tiny_model_path();
  options.log_dir = folder / "logs";
  options.history_db = folder / "history.sqlite";
  return options;
}

BackendEditOptions small_edit_options() {
  BackendEditOptions options;
  options.steps = 2;
  options.cfg_scale = 1.0;
  options.seed = 9;
  options.output_size = ImageSize{128, 128};
  return options;
}

// The message of the InvalidInputError that constructing a backend with `options` throws.
std::string construction_error(const BackendOptions& options) {
  return test_support::error_message([&] { EnhancedImageEditBackend backend(options); });
}

TEST(BackendConfig, UnknownYamlKeyNamesKeyAndFile) {
  TemporaryDirectory folder;
  const fs::path config = folder / "memory.yaml";
  test_support::write_file(config,
                           "memory_management:\n  fallback_enabled: true\n  fallback_retries: 2\n");
  BackendOptions options = options_in(folder);
  options.config_file = config;

  const std::string message = construction_error(options);

  EXPECT_NE(message.find(config.string()), std::string::npos) << message;
  EXPECT_NE(message.find("memory_management.fallback_retries"), std::string::npos) << message;
  EXPECT_NE(message.find("unknown key"), std::string::npos) << message;
}

TEST(BackendConfig, UnknownStrategyListsValidNames) {
  TemporaryDirectory folder;
  BackendOptions options = options_in(folder);
  options.first_strategy = "fp32_everything";

  const std::string message = construction_error(options);

  EXPECT_NE(message.find("fp32_everything"), std::string::npos) << message;
  EXPECT_NE(message.find("sequential_offload"), std::string::npos) << message;
}

TEST(BackendConfig, MissingConfigFileIsInvalidInput) {
  TemporaryDirectory folder;
  BackendOptions options = options_in(folder);
  options.config_file = folder / "absent.yaml";

  const std::string message = construction_error(options);

  EXPECT_NE(message.find("absent.yaml"), std::string::npos) << message;
}

TEST(BackendEdit, WritesLogEventsAndTimeline) {
  TemporaryDirectory folder;
  CpuCachingAllocator allocator;
  const ScopedAllocator scope(allocator);
  EnhancedImageEditBackend backend(options_in(folder));

  const BackendEditResult edited =
      backend.edit("make the sky green",
                   std::vector<Image>{test_support::gradient_image(kInputWidth, kInputHeight)},
                   small_edit_options());

  EXPECT_EQ(edited.image.width(), 128);
  EXPECT_EQ(edited.image.height(), 128);
  const std::string markdown = test_support::read_file(edited.markdown_path);
  EXPECT_NE(markdown.find("## Memory Management Log Entry"), std::string::npos);
  EXPECT_NE(markdown.find(edited.report.strategy.name), std::string::npos);

  std::vector<std::string> types;
  std::ifstream events(edited.events_path);
  for (std::string line; std::getline(events, line);) {
    types.push_back(nlohmann::json::parse(line).at("type").get<std::string>());
  }
  ASSERT_FALSE(types.empty());
  EXPECT_EQ(types.front(), "edit");
  EXPECT_EQ(types.back(), "edit");
  EXPECT_EQ(std::count(types.begin(), types.end(), "plan"), 5);
  EXPECT_GE(std::count(types.begin(), types.end(), "stage_peak"), 4);

  EXPECT_FALSE(edited.report.samples.empty()) << "profiling is on by default";
  const std::string svg = test_support::read_file(edited.timeline_path);
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);

  const nlohmann::json json = edited.to_json();
  EXPECT_EQ(json.at("strategy"), edited.report.strategy.name);
  EXPECT_TRUE(json.at("fallbacks").empty());
  EXPECT_TRUE(json.at("retries").empty());
  EXPECT_EQ(json.at("plans").size(), 5u);
  EXPECT_EQ(json.at("log_files").at("events"), edited.events_path.string());
}

TEST(BackendEdit, MemoryLimitLastsAsLongAsBackend) {
  TemporaryDirectory folder;
  CpuCachingAllocator allocator;
  const ScopedAllocator scope(allocator);
  {
    BackendOptions options = options_in(folder);
    options.memory_limit_bytes = 300ull << 20;
    EnhancedImageEditBackend backend(options);
    EXPECT_EQ(allocator.capacity(), 300ull << 20);
    EXPECT_EQ(backend.hardware().memory_limit_bytes, 300ull << 20);
  }
  EXPECT_EQ(allocator.capacity(), kUnlimitedCapacity);
}

TEST(BackendEdit, NothingFitsRaisesExhaustedAndLogsFailure) {
  TemporaryDirectory folder;
  CpuCachingAllocator allocator;
  const ScopedAllocator scope(allocator);
  BackendOptions options = options_in(folder);
  options.memory_limit_bytes = 1024;
  EnhancedImageEditBackend backend(options);

  try {
    backend.edit("make the sky green",
                 std::vector<Image>{test_support::gradient_image(kInputWidth, kInputHeight)},
                 small_edit_options());
    ADD_FAILURE() << "the edit fitted in 1 KiB";
  } catch (const memory::MemoryExhaustedError& error) {
    // The limit is the allocator's capacity, so the plans are exact and none was run.
    EXPECT_TRUE(error.attempts().empty());
    EXPECT_NE(std::string(error.what()).find("no strategy's plan fits"), std::string::npos)
        << error.what();
  }

  EXPECT_EQ(allocator.stats().allocated_bytes.current, 0);
  const std::string markdown = test_support::read_file(folder / "logs" / "memory_log.md");
  EXPECT_NE(markdown.find("## Memory Management Log Entry"), std::string::npos);
  EXPECT_NE(markdown.find("### Edit: none"), std::string::npos) << markdown;
}

TEST(BackendLoad, LoadsBestStrategyAndReusesIt) {
  TemporaryDirectory folder;
  CpuCachingAllocator allocator;
  const ScopedAllocator scope(allocator);
  BackendOptions options = options_in(folder);
  options.mode = memory::Mode::quality;
  EnhancedImageEditBackend backend(options);

  const BackendLoadReport report = backend.load();
  ASSERT_TRUE(report.success) << report.error;
  EXPECT_EQ(report.strategy, "fp16_full");
  EXPECT_EQ(report.recommended.front(), "fp16_full");
  const std::int64_t allocated_after_load = allocator.stats().allocated_bytes.current;
  EXPECT_GT(allocated_after_load, 0);

  const BackendEditResult edited =
      backend.edit("make the sky green",
                   std::vector<Image>{test_support::gradient_image(kInputWidth, kInputHeight)},
                   small_edit_options());
  EXPECT_EQ(edited.report.strategy.name, "fp16_full");
  ASSERT_FALSE(edited.report.attempts.empty());
  EXPECT_EQ(edited.report.attempts.front().detail, "reused the loaded model");
  EXPECT_EQ(edited.report.load_s, 0.0);
}

std::vector<std::string> strategies_of(const nlohmann::json& attempts) {
  std::vector<std::string> names;
  for (const nlohmann::json& attempt : attempts) {
    names.push_back(attempt.at("strategy").get<std::string>() +
                    (attempt.at("reduced_working_memory").get<bool>() ? " reduced" : ""));
  }
  return names;
}

TEST(BackendJson, SeparatesRetriesFromFallbacks) {
  BackendEditResult edited;
  edited.report.attempts = {{"fp16_full", "load", "success", "", false, std::nullopt},
                            {"fp16_full", "edit", "out_of_memory", "", false, std::nullopt},
                            {"fp16_full", "edit", "out_of_memory", "", true, std::nullopt},
                            {"fp8_optimized", "load", "out_of_memory", "", false, std::nullopt},
                            {"cpu_offload", "load", "success", "", false, std::nullopt},
                            {"cpu_offload", "edit", "out_of_memory", "", false, std::nullopt},
                            {"sequential_offload", "load", "success", "", false, std::nullopt},
                            {"sequential_offload", "edit", "success", "", false, std::nullopt}};

  const nlohmann::json json = edited.to_json();

  EXPECT_EQ(strategies_of(json.at("retries")), std::vector<std::string>{"fp16_full"});
  EXPECT_EQ(strategies_of(json.at("fallbacks")),
            (std::vector<std::string>{"fp16_full reduced", "fp8_optimized", "cpu_offload"}));
  EXPECT_EQ(json.at("attempts").size(), 8u);
}

}  // namespace
}  // namespace ethereal::manager_test
