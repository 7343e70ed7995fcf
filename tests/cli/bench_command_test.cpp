#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/run_command.h"
#include "io/safetensors_writer.h"
#include "models/tiny_model.h"
#include "support/files.h"
#include "support/inputs.h"

namespace ethereal::test {
namespace {

namespace fs = std::filesystem;

// The twelve block layers a Lightning LoRA changes, with their [out, in] in multiples of the
// model width D (the MLP is 4D wide).
struct LightningModule {
  const char* name;
  int out_multiple;
  int in_multiple;
};
constexpr LightningModule kLightningModules[] = {
    {"attn.to_q", 1, 1},       {"attn.to_k", 1, 1},          {"attn.to_v", 1, 1},
    {"attn.add_q_proj", 1, 1}, {"attn.add_k_proj", 1, 1},    {"attn.add_v_proj", 1, 1},
    {"attn.to_out.0", 1, 1},   {"attn.to_add_out", 1, 1},    {"img_mlp.net.0.proj", 4, 1},
    {"img_mlp.net.2", 1, 4},   {"txt_mlp.net.0.proj", 4, 1}, {"txt_mlp.net.2", 1, 4},
};

// A rank-4 LoRA in the Lightning key layout (<module>.lora_down.weight [r, in],
// <module>.lora_up.weight [out, r], <module>.alpha) for every block of the model at `model`.
void write_lightning_lora(const fs::path& model, const fs::path& path) {
  std::ifstream config_file(model / "transformer" / "config.json");
  const nlohmann::json config = nlohmann::json::parse(config_file);
  const std::int64_t width = config["num_attention_heads"].get<std::int64_t>() *
                             config["attention_head_dim"].get<std::int64_t>();
  const std::int64_t rank = 4;
  const float alpha[] = {4.0f};
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::uint32_t seed = 1;
  for (int block = 0; block < config["num_layers"].get<int>(); ++block) {
    for (const LightningModule& module : kLightningModules) {
      const std::string base = "transformer_blocks." + std::to_string(block) + "." + module.name;
      tensors.emplace_back(base + ".lora_down.weight",
                           test_support::uniform_tensor({rank, module.in_multiple * width},
                                                        DType::f32, seed++, -0.1f, 0.1f));
      tensors.emplace_back(base + ".lora_up.weight",
                           test_support::uniform_tensor({module.out_multiple * width, rank},
                                                        DType::f32, seed++, -0.1f, 0.1f));
      tensors.emplace_back(base + ".alpha", Tensor::from_floats(alpha, {}, DType::f32));
    }
  }
  write_safetensors(path, tensors);
}

// Writes the tiny model once for all tests of this file.
class BenchCommandTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = test_support::create_temporary_directory("bench_command");
    write_tiny_model(root_ / "model", 7);
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  static std::vector<std::string> bench_arguments(std::vector<std::string> extra) {
    std::vector<std::string> arguments = {"bench", "--model", (root_ / "model").string(), "--seed",
                                          "3"};
    arguments.insert(arguments.end(), extra.begin(), extra.end());
    return arguments;
  }

  static fs::path root_;
};

fs::path BenchCommandTest::root_;

TEST_F(BenchCommandTest, ComparesFp8WithReferenceInJson) {
  const CommandResult result =
      run_ethereal(bench_arguments({"--steps", "2", "--strategies", "fp16_full,fp8_optimized",
                                    "--json", "--width", "256", "--height", "256"}));
  ASSERT_EQ(result.exit_status, 0) << result.standard_error;
  const nlohmann::json document = nlohmann::json::parse(result.standard_output);

  EXPECT_EQ(document["reference"], "fp16_full");
  EXPECT_FALSE(document["machine"]["cpu_model"].get<std::string>().empty());
  EXPECT_GE(document["machine"]["cores"].get<int>(), 1);
  EXPECT_FALSE(document["machine"]["fp8_note"].get<std::string>().empty());
  EXPECT_EQ(document["request"]["steps"], 2);

  const nlohmann::json& results = document["results"];
  ASSERT_EQ(results.size(), 2u);
  const nlohmann::json& reference = results[0];
  EXPECT_EQ(reference["strategy"], "fp16_full");
  EXPECT_EQ(reference["weight_format"], "bf16");
  EXPECT_EQ(reference["placement"], "resident");
  EXPECT_TRUE(reference["reference"].get<bool>());
  EXPECT_TRUE(reference["psnr_db"].is_null());
  EXPECT_TRUE(reference["psnr_identical"].get<bool>());
  EXPECT_NEAR(reference["ssim"].get<double>(), 1.0, 1e-12);

  const nlohmann::json& fp8 = results[1];
  EXPECT_EQ(fp8["strategy"], "fp8_optimized");
  EXPECT_EQ(fp8["weight_format"], "fp8_e4m3");
  EXPECT_FALSE(fp8["reference"].get<bool>());
  EXPECT_FALSE(fp8["psnr_identical"].get<bool>());
  const double psnr = fp8["psnr_db"].get<double>();
  EXPECT_TRUE(std::isfinite(psnr));
  EXPECT_GT(psnr, 10.0);
  EXPECT_GT(fp8["ssim"].get<double>(), 0.0);
  EXPECT_LE(fp8["ssim"].get<double>(), 1.0);
  // Only the quantisable layers shrink, so the fp8 weights are smaller but not half.
  EXPECT_LT(fp8["weight_bytes"].get<std::int64_t>(), reference["weight_bytes"].get<std::int64_t>());

  for (const nlohmann::json& row : results) {
    const std::string name = row["strategy"];
    EXPECT_TRUE(row["success"].get<bool>()) << name;
    EXPECT_FALSE(row["out_of_memory"].get<bool>()) << name;
    EXPECT_EQ(row["width"], 256) << name;
    EXPECT_EQ(row["height"], 256) << name;
    EXPECT_GT(row["weight_bytes"].get<std::int64_t>(), 0) << name;
    EXPECT_GE(row["peak_allocated_bytes"].get<std::int64_t>(),
              row["weight_bytes"].get<std::int64_t>())
        << name;
    EXPECT_GE(row["peak_reserved_bytes"].get<std::int64_t>(),
              row["peak_allocated_bytes"].get<std::int64_t>())
        << name;
    EXPECT_GT(row["load_s"].get<double>(), 0.0) << name;
    EXPECT_GT(row["step_s"].get<double>(), 0.0) << name;
    EXPECT_GE(row["total_s"].get<double>(), row["load_s"].get<double>()) << name;
  }

  const nlohmann::json& errors = document["weight_error"]["fp8_e4m3"];
  EXPECT_GT(errors["layers"].get<int>(), 0);
  EXPECT_GT(errors["median"].get<double>(), 0.0);
  EXPECT_GE(errors["max"].get<double>(), errors["median"].get<double>());
  EXPECT_LT(errors["max"].get<double>(), 0.1);
  ASSERT_EQ(errors["worst"].size(), 3u);
  EXPECT_FALSE(errors["worst"][0]["layer"].get<std::string>().empty());
  EXPECT_FALSE(document["weight_error"].contains("nf4"));
}

TEST_F(BenchCommandTest, LightningComparesThreeConfigurations) {
  const fs::path lora = root_ / "tiny-lightning-4steps.safetensors";
  write_lightning_lora(root_ / "model", lora);
  const CommandResult result = run_ethereal(bench_arguments(
      {"--lightning", lora.string(), "--steps", "2", "--width", "64", "--height", "64", "--json"}));
  ASSERT_EQ(result.exit_status, 0) << result.standard_error;
  const nlohmann::json document = nlohmann::json::parse(result.standard_output);

  EXPECT_EQ(document["reference"], "base");
  const nlohmann::json& results = document["results"];
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0]["configuration"], "base");
  EXPECT_EQ(results[0]["steps"], 2);
  EXPECT_FALSE(results[0]["lora"].get<bool>());
  EXPECT_EQ(results[1]["configuration"], "lightning_bf16");
  EXPECT_EQ(results[1]["weight_format"], "bf16");
  EXPECT_EQ(results[2]["configuration"], "lightning_fp8");
  EXPECT_EQ(results[2]["weight_format"], "fp8_e4m3");
  for (std::size_t index = 1; index < results.size(); ++index) {
    const nlohmann::json& row = results[index];
    const std::string name = row["configuration"];
    EXPECT_TRUE(row["success"].get<bool>()) << name;
    EXPECT_TRUE(row["lora"].get<bool>()) << name;
    EXPECT_EQ(row["steps"], 4) << name;  // from "4steps" in the file name
    EXPECT_EQ(row["cfg_scale"], 1.0) << name;
    // A different sampler and weights: the output differs from the base, by any amount.
    EXPECT_TRUE(std::isfinite(row["psnr_db"].get<double>())) << name;
    EXPECT_LT(row["ssim"].get<double>(), 1.0) << name;
  }
  EXPECT_TRUE(document["weight_error"].contains("fp8_e4m3"));
  EXPECT_FALSE(document["weight_error"].contains("int8"));
}

TEST_F(BenchCommandTest, OutOfMemoryIsReportedInRows) {
  const CommandResult result = run_ethereal(
      bench_arguments({"--strategies", "int8+resident", "--memory-limit", "64KiB", "--steps", "2",
                       "--width", "64", "--height", "64", "--no-weight-error", "--json"}));
  // Every configuration failed for lack of memory.
  EXPECT_EQ(result.exit_status, 3) << result.standard_error;
  const nlohmann::json document = nlohmann::json::parse(result.standard_output);
  const nlohmann::json& results = document["results"];
  ASSERT_EQ(results.size(), 2u);
  for (const nlohmann::json& row : results) {
    const std::string name = row["strategy"];
    EXPECT_FALSE(row["success"].get<bool>()) << name;
    EXPECT_TRUE(row["out_of_memory"].get<bool>()) << name;
    EXPECT_FALSE(row["message"].get<std::string>().empty()) << name;
  }
  EXPECT_TRUE(document["weight_error"].is_null());
}

TEST_F(BenchCommandTest, TextTableMarksOutOfMemory) {
  const CommandResult result = run_ethereal(bench_arguments(
      {"--strategies", "fp16_full", "--memory-limit", "64KiB", "--no-weight-error"}));
  EXPECT_EQ(result.exit_status, 3) << result.standard_error;
  EXPECT_NE(result.standard_output.find("fp16_full (ref)"), std::string::npos)
      << result.standard_output;
  EXPECT_NE(result.standard_output.find("OOM"), std::string::npos) << result.standard_output;
  EXPECT_NE(result.standard_output.find("fp16_full: out of memory"), std::string::npos)
      << result.standard_output;
}

TEST_F(BenchCommandTest, RejectsUnknownStrategy) {
  const CommandResult result = run_ethereal(bench_arguments({"--strategies", "fp16_full,fp7"}));
  EXPECT_EQ(result.exit_status, 2);
  EXPECT_NE(result.standard_error.find("fp7"), std::string::npos) << result.standard_error;
}

TEST_F(BenchCommandTest, RejectsOneStepBeforeLoading) {
  // The model's schedule stretches to shift_terminal, which needs two steps or more.
  const CommandResult result = run_ethereal(bench_arguments({"--steps", "1", "--json"}));
  EXPECT_EQ(result.exit_status, 2);
  EXPECT_NE(result.standard_error.find("at least 2 steps"), std::string::npos)
      << result.standard_error;
  EXPECT_EQ(result.standard_error.find("loading"), std::string::npos) << result.standard_error;
  EXPECT_TRUE(result.standard_output.empty()) << result.standard_output;
}

TEST_F(BenchCommandTest, RejectsLightningWithStrategies) {
  const fs::path lora = root_ / "unused-8steps.safetensors";
  std::ofstream(lora) << "placeholder";
  const CommandResult result = run_ethereal(
      bench_arguments({"--lightning", lora.string(), "--strategies", "fp8_optimized"}));
  EXPECT_EQ(result.exit_status, 2);
  EXPECT_NE(result.standard_error.find("--strategies"), std::string::npos) << result.standard_error;
}

}  // namespace
}  // namespace ethereal::test
