#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/run_command.h"
#include "io/safetensors_checkpoint.h"
#include "models/tiny_model.h"
#include "support/files.h"

namespace ethereal::test {
namespace {

namespace fs = std::filesystem;

class QuantizeCommandTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = test_support::create_temporary_directory("quantize_command");
    fs::create_directories(root_ / "outputs");
    write_tiny_model(root_ / "model", 7);
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  static CommandResult quantize(const std::string& format, const fs::path& output,
                                std::vector<std::string> extra = {}) {
    std::vector<std::string> arguments = {"quantize",     "--model", (root_ / "model").string(),
                                          "--format",     format,    "--output",
                                          output.string()};
    arguments.insert(arguments.end(), extra.begin(), extra.end());
    return run_ethereal(arguments);
  }

  static std::vector<std::string> outputs() {
    std::vector<std::string> names;
    for (const fs::directory_entry& entry : fs::directory_iterator(root_ / "outputs")) {
      names.push_back(entry.path().filename().string());
    }
    return names;
  }

  static fs::path root_;
};

fs::path QuantizeCommandTest::root_;

TEST_F(QuantizeCommandTest, WritesModelAndReportsJson) {
  const fs::path output = root_ / "outputs" / "json";
  const CommandResult result = quantize("int8", output, {"--json"});
  ASSERT_EQ(result.exit_status, 0) << result.standard_error;
  const nlohmann::json report = nlohmann::json::parse(result.standard_output);
  EXPECT_EQ(report["format"], "int8");
  ASSERT_EQ(report["components"].size(), 2u);
  EXPECT_EQ(report["components"][0]["component"], "transformer");
  EXPECT_GT(report["components"][0]["quantized_layers"].get<int>(), 0);
  EXPECT_LT(report["components"][0]["output_bytes"].get<std::uint64_t>(),
            report["components"][0]["source_bytes"].get<std::uint64_t>());
  const SafetensorsCheckpoint transformer =
      SafetensorsCheckpoint::open(output / "transformer" / "diffusion_pytorch_model.safetensors");
  EXPECT_EQ(transformer.info("transformer_blocks.0.attn.to_q.weight").stored_dtype, "I8");
  fs::remove_all(output);
}

TEST_F(QuantizeCommandTest, RejectsBadFormatWithoutOutput) {
  const CommandResult result = quantize("fp4", root_ / "outputs" / "bad_format");
  EXPECT_EQ(result.exit_status, 2);
  EXPECT_NE(result.standard_error.find("fp4"), std::string::npos) << result.standard_error;
  EXPECT_TRUE(outputs().empty());
}

TEST_F(QuantizeCommandTest, RejectsMissingParentWithoutOutput) {
  const CommandResult result = quantize("nf4", root_ / "outputs" / "missing" / "out");
  EXPECT_EQ(result.exit_status, 2);
  EXPECT_NE(result.standard_error.find("does not exist"), std::string::npos)
      << result.standard_error;
  EXPECT_TRUE(outputs().empty());
}

TEST_F(QuantizeCommandTest, ReplacesExistingOutputOnlyWithForce) {
  const fs::path output = root_ / "outputs" / "existing";
  fs::create_directories(output);
  std::ofstream(output / "keep.txt") << "previous";

  const CommandResult refused = quantize("fp8_e4m3", output);
  EXPECT_EQ(refused.exit_status, 2);
  EXPECT_NE(refused.standard_error.find("--force"), std::string::npos) << refused.standard_error;
  EXPECT_TRUE(fs::exists(output / "keep.txt"));

  const CommandResult forced = quantize("fp8_e4m3", output, {"--force"});
  ASSERT_EQ(forced.exit_status, 0) << forced.standard_error;
  EXPECT_FALSE(fs::exists(output / "keep.txt"));
  EXPECT_TRUE(fs::exists(output / "text_encoder" / "model.safetensors"));
  EXPECT_EQ(outputs(), std::vector<std::string>{"existing"});
  fs::remove_all(output);
}

}  // namespace
}  // namespace ethereal::test
