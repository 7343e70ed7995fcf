#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli/run_command.h"

namespace ethereal::test {
namespace {

TEST(ProfileCommand, JsonIsOneDocumentWithByteSizes) {
  const CommandResult result = run_ethereal({"profile", "--json"});
  ASSERT_EQ(result.exit_status, 0) << result.standard_error;
  const nlohmann::json document = nlohmann::json::parse(result.standard_output);

  EXPECT_GE(document["cpu"]["usable_cores"].get<int>(), 1);
  EXPECT_FALSE(document["cpu"]["model_name"].get<std::string>().empty());
  EXPECT_TRUE(document["cpu"]["features"].contains("avx512_bf16"));
  EXPECT_TRUE(document["cpu"]["features"].contains("amx_bf16"));

  const auto total = document["host_memory"]["total_bytes"].get<std::uint64_t>();
  const auto available = document["host_memory"]["available_bytes"].get<std::uint64_t>();
  EXPECT_GT(total, std::uint64_t{1} << 28);
  EXPECT_LE(available, total);

  const auto resident = document["process_memory"]["resident_bytes"].get<std::uint64_t>();
  EXPECT_GT(resident, 0u);
  EXPECT_GE(document["process_memory"]["peak_resident_bytes"].get<std::uint64_t>(), resident);

  EXPECT_TRUE(document["gpus"].is_array());
  EXPECT_FALSE(document["gpu_status"].get<std::string>().empty());
  EXPECT_TRUE(document["device_allocator"].contains("reserved_bytes"));
  EXPECT_EQ(document["device_allocator"]["device"], "cpu");
}

TEST(ProfileCommand, TextReportNamesSections) {
  const CommandResult result = run_ethereal({"profile"});
  ASSERT_EQ(result.exit_status, 0) << result.standard_error;
  for (const char* section :
       {"CPU", "AVX512_BF16", "Host memory", "Process", "Device allocator", "GPU"}) {
    EXPECT_NE(result.standard_output.find(section), std::string::npos) << section;
  }
}

TEST(CommandLine, UnknownOptionExitsWithUsageStatus) {
  const CommandResult result = run_ethereal({"profile", "--no-such-option"});
  EXPECT_EQ(result.exit_status, 2);
  EXPECT_NE(result.standard_error.find("--no-such-option"), std::string::npos)
      << result.standard_error;
}

TEST(CommandLine, ThreadsOptionRejectsNegative) {
  const CommandResult result = run_ethereal({"--threads", "-3", "profile"});
  EXPECT_EQ(result.exit_status, 2);
}

}  // namespace
}  // namespace ethereal::test
