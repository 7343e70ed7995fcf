// `ethereal edit` under a memory limit and `ethereal plan`: exit statuses, what the messages
// and JSON documents list, and the log files.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/edit_inputs.h"
#include "cli/run_command.h"
#include "io/image_file.h"
#include "memory/planner.h"
#include "memory/strategy.h"
#include "runtime/allocator.h"
#include "support/files.h"

namespace ethereal::test {
namespace {

namespace fs = std::filesystem;

constexpr const char* kPrompt = "make the sky green";

// The tiny model and a 40x30 photo are written once. Each test gets its own output folder and a
// configuration with the history database in that folder, so adaptive choices do not depend on
// earlier tests or on the user's history.
class MemoryManagementCommandTest : public EditInputsTest {
 protected:
  void SetUp() override {
    folder_ = root_ / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::create_directories(folder_ / "out");
    config_ = folder_ / "memory.yaml";
    std::ofstream(config_) << "memory_management:\n  history_db: " << (folder_ / "history.sqlite")
                           << "\n";
  }

  // An edit of the photo to 256x256 with two steps and CFG 1, writing `output`.
  std::vector<std::string> edit_arguments(const fs::path& output) const {
    return edit_arguments_with(
        output, {"--prompt", kPrompt, "--steps", "2", "--cfg-scale", "1", "--width", "256",
                 "--height", "256", "--seed", "4", "--config", config_.string(), "--log-dir",
                 (folder_ / "logs").string()});
  }

  // The allocated peak of `strategy` with reduced working memory for the edit that
  // edit_arguments describes: under a limit of this many bytes the strategy fits.
  static std::uint64_t reduced_need(const std::string& strategy) {
    memory::PlanRequest request;
    request.image_sizes = {{40, 30}};
    request.output_size = ImageSize{256, 256};
    request.steps = 2;
    request.cfg_scale = 1.0;
    request.prompt = kPrompt;
    const memory::Planner planner(ModelDirectory::open(root_ / "model"), PipelineLoadOptions{});
    const memory::TierBudget unlimited{kUnlimitedCapacity, kUnlimitedCapacity, true};
    return planner
        .plan(memory::with_reduced_working_memory(memory::parse_strategy(strategy)), request,
              unlimited)
        .peak_allocated_bytes;
  }

  fs::path folder_;
  fs::path config_;
};

// Under an explicit limit the plans are exact, so a limit below every plan runs nothing.
TEST_F(MemoryManagementCommandTest, TinyLimitExitsThreeWithAdvice) {
  const fs::path output = folder_ / "out" / "edited.png";
  std::vector<std::string> arguments = edit_arguments(output);
  arguments.insert(arguments.end(), {"--memory-limit", "1KiB"});

  const CommandResult result = run_ethereal(arguments);

  EXPECT_EQ(result.exit_status, 3) << result.standard_error;
  EXPECT_NE(result.standard_error.find("no strategy's plan fits in 0.0 MiB at 256x256"),
            std::string::npos)
      << result.standard_error;
  EXPECT_NE(result.standard_error.find("The leanest plan, cpu_offload, needs about"),
            std::string::npos)
      << result.standard_error;
  EXPECT_NE(result.standard_error.find("raise --memory-limit"), std::string::npos)
      << result.standard_error;
  EXPECT_TRUE(test_support::file_names(folder_ / "out").empty())
      << "an output or temporary file was left";
}

TEST_F(MemoryManagementCommandTest, UnknownStrategyExitsTwo) {
  const fs::path output = folder_ / "out" / "edited.png";
  std::vector<std::string> arguments = edit_arguments(output);
  arguments.insert(arguments.end(), {"--strategy", "bogus"});

  const CommandResult result = run_ethereal(arguments);

  EXPECT_EQ(result.exit_status, 2) << result.standard_error;
  EXPECT_NE(result.standard_error.find("unknown strategy \"bogus\""), std::string::npos)
      << result.standard_error;
  EXPECT_NE(result.standard_error.find("sequential_offload"), std::string::npos);
  EXPECT_TRUE(test_support::file_names(folder_ / "out").empty());
}

TEST_F(MemoryManagementCommandTest, LimitBelowResidentNeedFallsBack) {
  const std::uint64_t limit = reduced_need("cpu_offload");
  ASSERT_LT(limit, reduced_need("fp16_full"));
  const fs::path output = folder_ / "out" / "edited.png";
  std::vector<std::string> arguments = edit_arguments(output);
  arguments.insert(arguments.end(),
                   {"--memory-limit", std::to_string(limit), "--strategy", "fp16_full", "--json"});

  const CommandResult result = run_ethereal(arguments);

  ASSERT_EQ(result.exit_status, 0) << result.standard_error;
  const nlohmann::json document = nlohmann::json::parse(result.standard_output);
  EXPECT_EQ(document.at("strategy"), "cpu_offload");
  // By its plan fp16_full does not fit even with reduced working memory, so it starts with
  // reduced working memory: no retry, one fallback.
  EXPECT_TRUE(document.at("retries").empty()) << document.dump(2);
  ASSERT_EQ(document.at("fallbacks").size(), 1u) << document.dump(2);
  EXPECT_EQ(document.at("fallbacks")[0].at("outcome"), "out_of_memory");
  EXPECT_EQ(document.at("fallbacks")[0].at("strategy"), "fp16_full");
  EXPECT_EQ(document.at("fallbacks")[0].at("reduced_working_memory"), true);
  EXPECT_LE(document.at("peak_reserved_bytes").get<std::uint64_t>(), limit);
  EXPECT_EQ(document.at("recommended").front(), "fp16_full");

  const Image image = read_image(output);
  EXPECT_EQ(image.width(), 256);
  EXPECT_EQ(image.height(), 256);
}

TEST_F(MemoryManagementCommandTest, EditWritesLogEventsAndTimeline) {
  const fs::path output = folder_ / "out" / "edited.png";
  std::vector<std::string> arguments = edit_arguments(output);
  arguments.push_back("--json");

  const CommandResult result = run_ethereal(arguments);

  ASSERT_EQ(result.exit_status, 0) << result.standard_error;
  const nlohmann::json files = nlohmann::json::parse(result.standard_output).at("log_files");
  const fs::path logs = folder_ / "logs";
  EXPECT_EQ(files.at("markdown"), (logs / "memory_log.md").string());
  EXPECT_NE(test_support::read_file(logs / "memory_log.md").find("Memory Management Log Entry"),
            std::string::npos);
  int jsonl = 0;
  int svg = 0;
  for (const std::string& name : test_support::file_names(logs)) {
    jsonl += name.ends_with(".events.jsonl") ? 1 : 0;
    svg += name.ends_with(".timeline.svg") ? 1 : 0;
  }
  EXPECT_EQ(jsonl, 1);
  EXPECT_EQ(svg, 1);
  EXPECT_TRUE(fs::exists(files.at("events").get<std::string>()));
  EXPECT_NE(test_support::read_file(files.at("timeline").get<std::string>()).find("<svg"),
            std::string::npos);
}

TEST_F(MemoryManagementCommandTest, PlanJsonHasPeaksPerTierAndStage) {
  const CommandResult result = run_ethereal(
      {"plan", "--model", (root_ / "model").string(), "--config", config_.string(), "--json"});

  ASSERT_EQ(result.exit_status, 0) << result.standard_error;
  const nlohmann::json document = nlohmann::json::parse(result.standard_output);
  const nlohmann::json& strategies = document.at("strategies");
  ASSERT_EQ(strategies.size(), 5u);
  std::vector<std::string> names;
  for (const nlohmann::json& plan : strategies) {
    names.push_back(plan.at("strategy"));
    EXPECT_TRUE(plan.at("fits").is_boolean());
    EXPECT_GT(plan.at("peak_bytes").at("device").get<std::uint64_t>(), 0u);
    EXPECT_GT(plan.at("peak_bytes").at("host").get<std::uint64_t>(), 0u);
    for (const char* stage : {"load", "text_encoding", "vae_encode", "denoising", "vae_decode"}) {
      EXPECT_TRUE(plan.at("stage_peak_bytes").contains(stage)) << plan.at("strategy") << stage;
    }
    EXPECT_LE(plan.at("peak_allocated_bytes").get<std::uint64_t>(),
              plan.at("peak_bytes").at("device").get<std::uint64_t>());
  }
  EXPECT_EQ(names, (std::vector<std::string>{"fp16_full", "fp8_optimized", "nf4_quantized",
                                             "cpu_offload", "sequential_offload"}));
  ASSERT_TRUE(document.at("recommended").is_array());
  EXPECT_EQ(document.at("recommended").size(), 5u) << "the tiny model fits this machine";
  EXPECT_EQ(document.at("machine").at("device"), "cpu");
}

TEST_F(MemoryManagementCommandTest, PlanForRtx4090ReportsNativeFp8) {
  const CommandResult result =
      run_ethereal({"plan", "--model", (root_ / "model").string(), "--config", config_.string(),
                    "--device-memory", "8GiB", "--host-memory", "32GiB", "--device-name",
                    "RTX 4090", "--compute-capability", "8.9", "--json"});

  ASSERT_EQ(result.exit_status, 0) << result.standard_error;
  const nlohmann::json document = nlohmann::json::parse(result.standard_output);
  EXPECT_EQ(document.at("machine").at("fp8_native"), true);
  EXPECT_EQ(document.at("machine").at("device_name"), "RTX 4090");
  EXPECT_EQ(document.at("budget").at("device_is_host"), false);
  ASSERT_EQ(document.at("strategies").size(), 5u);
  for (const nlohmann::json& plan : document.at("strategies")) {
    EXPECT_EQ(plan.at("fits"), true) << plan.at("strategy");
  }
  EXPECT_EQ(document.at("recommended").size(), 5u);
}

TEST_F(MemoryManagementCommandTest, PlanForOldGpuHasNoNativeFp8) {
  const CommandResult result =
      run_ethereal({"plan", "--model", (root_ / "model").string(), "--config", config_.string(),
                    "--device-memory", "8GiB", "--host-memory", "32GiB", "--device-name",
                    "RTX 3090", "--compute-capability", "8.6", "--json"});

  ASSERT_EQ(result.exit_status, 0) << result.standard_error;
  EXPECT_EQ(nlohmann::json::parse(result.standard_output).at("machine").at("fp8_native"), false);
}

}  // namespace
}  // namespace ethereal::test
