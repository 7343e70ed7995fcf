#include "pipeline/strategy_bench.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "models/tiny_model.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "support/files.h"
#include "support/inputs.h"

namespace ethereal {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> names_of(const std::vector<BenchConfiguration>& configurations) {
  std::vector<std::string> names;
  for (const BenchConfiguration& configuration : configurations) {
    names.push_back(configuration.name);
  }
  return names;
}

EditRequest small_request() {
  EditRequest request;
  request.images = {synthetic_bench_image(48, 40)};
  request.prompt = "turn the lights on";
  request.steps = 2;
  request.seed = 5;
  request.output_size = ImageSize{32, 32};
  return request;
}

TEST(StrategyConfigurations, PutsReferenceFirstWithoutRepeats) {
  const std::vector<memory::LoadStrategy> strategies = {
      memory::parse_strategy("nf4_quantized"), memory::parse_strategy("fp16_full"),
      memory::parse_strategy("int8+resident"), memory::parse_strategy("nf4_quantized")};
  const std::vector<BenchConfiguration> configurations =
      strategy_configurations(strategies, PipelineLoadOptions{}, small_request());
  EXPECT_EQ(names_of(configurations),
            (std::vector<std::string>{"fp16_full", "nf4_quantized", "int8+resident"}));
  EXPECT_FALSE(configurations[0].load.quant.format.has_value());
  EXPECT_EQ(configurations[1].load.quant.format, quant::QuantFormat::nf4);
  EXPECT_EQ(configurations[2].load.quant.format, quant::QuantFormat::int8);
  EXPECT_EQ(configurations[2].request.seed, 5u);
  EXPECT_EQ(quantized_formats(configurations),
            (std::vector<quant::QuantFormat>{quant::QuantFormat::nf4, quant::QuantFormat::int8}));
}

TEST(LightningConfigurations, ApplyRecipeToBothLightningRows) {
  const fs::path lora = fs::path(::testing::TempDir()) /
                        ("bench-lightning-4steps-" + std::to_string(::getpid()) + ".safetensors");
  std::ofstream(lora) << "placeholder";  // only its existence and name are read here
  EditRequest request = small_request();
  request.steps = 30;
  request.cfg_scale = 4.0;
  const std::vector<BenchConfiguration> configurations = lightning_configurations(
      lora, PipelineLoadOptions{}, request, memory::describe_machine(8ull << 30, 8ull << 30));
  fs::remove(lora);

  ASSERT_EQ(names_of(configurations),
            (std::vector<std::string>{"base", "lightning_bf16", "lightning_fp8"}));
  const BenchConfiguration& base = configurations[0];
  EXPECT_EQ(base.request.steps, 30);
  EXPECT_EQ(base.request.cfg_scale, 4.0);
  EXPECT_TRUE(base.load.loras.empty());
  EXPECT_FALSE(base.request.scheduler.has_value());
  for (std::size_t index = 1; index < configurations.size(); ++index) {
    const BenchConfiguration& lightning = configurations[index];
    EXPECT_EQ(lightning.request.steps, 4) << lightning.name;
    EXPECT_EQ(lightning.request.cfg_scale, 1.0) << lightning.name;
    EXPECT_TRUE(lightning.request.scheduler.has_value()) << lightning.name;
    ASSERT_EQ(lightning.load.loras.size(), 1u) << lightning.name;
    EXPECT_EQ(lightning.load.loras[0].path, lora) << lightning.name;
  }
  EXPECT_FALSE(configurations[1].load.quant.format.has_value());
  EXPECT_EQ(configurations[2].load.quant.format, quant::QuantFormat::fp8_e4m3);
  EXPECT_EQ(configurations[2].load.quant.fp8_scales, quant::ScaleGranularity::per_channel);
  EXPECT_FALSE(configurations[2].load.lora_at_run_time);
}

TEST(LightningConfigurations, MissingFileIsInvalidInput) {
  EXPECT_THROW(
      lightning_configurations("/nonexistent/lightning.safetensors", PipelineLoadOptions{},
                               small_request(), memory::describe_machine(8ull << 30, 8ull << 30)),
      InvalidInputError);
}

TEST(RelativeWeightError, MatchesHandComputedInt8Value) {
  // Row scale 1/127: 0.3 * 127 = 38.1 rounds to 38, so the error is 0.3 - 38/127.
  const float values[] = {1.0f, 0.3f};
  const Tensor weight = Tensor::from_floats(values, {1, 2}, DType::f32);
  const double error = static_cast<double>(0.3f) - 38.0 * static_cast<double>(1.0f / 127.0f);
  const double expected = std::abs(error) / std::sqrt(1.0 + static_cast<double>(0.3f) * 0.3f);
  EXPECT_NEAR(relative_weight_error(weight, quant::QuantFormat::int8), expected, 1e-6);
}

TEST(RelativeWeightError, ZeroWeightHasNoError) {
  const Tensor weight = Tensor::zeros({4, 64}, DType::bf16);
  for (quant::QuantFormat format :
       {quant::QuantFormat::fp8_e4m3, quant::QuantFormat::nf4, quant::QuantFormat::int8}) {
    EXPECT_EQ(relative_weight_error(weight, format), 0.0) << quant::quant_format_name(format);
  }
}

TEST(RelativeWeightError, OrdersFormatsOnNormalWeights) {
  // Expected magnitudes for normal weights: int8 about 1%, fp8 e4m3 about 2.5%, nf4 about 10%.
  const Tensor weight = test_support::normal_tensor({128, 256}, DType::f32, 9);
  const double int8 = relative_weight_error(weight, quant::QuantFormat::int8);
  const double fp8 = relative_weight_error(weight, quant::QuantFormat::fp8_e4m3);
  const double nf4 = relative_weight_error(weight, quant::QuantFormat::nf4);
  EXPECT_GT(int8, 0.0);
  EXPECT_LT(int8, fp8);
  EXPECT_LT(fp8, nf4);
  EXPECT_LT(fp8, 0.05);
  EXPECT_LT(nf4, 0.15);
}

TEST(RelativeWeightError, RejectsOneDimensionalTensor) {
  EXPECT_THROW(relative_weight_error(Tensor::zeros({8}, DType::f32), quant::QuantFormat::int8),
               InvalidInputError);
}

TEST(SyntheticBenchImage, HasRequestedSizeAndStructure) {
  const Image image = synthetic_bench_image(64, 48);
  EXPECT_EQ(image.width(), 64);
  EXPECT_EQ(image.height(), 48);
  EXPECT_EQ(image.channels(), 3);
  EXPECT_NE(image.at(0, 0, 0), image.at(63, 0, 0));
  EXPECT_NE(image.at(0, 0, 1), image.at(0, 47, 1));
}

class StrategyBenchModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = test_support::create_temporary_directory("strategy_bench");
    write_tiny_model(root_ / "model", 3);
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  static fs::path root_;
};

fs::path StrategyBenchModelTest::root_;

TEST_F(StrategyBenchModelTest, WeightErrorCoversQuantisableLayers) {
  const ModelDirectory model = ModelDirectory::open(root_ / "model");
  const WeightErrorReport report =
      measure_weight_error(model, {quant::QuantFormat::int8, quant::QuantFormat::nf4});
  ASSERT_EQ(report.formats.size(), 2u);
  EXPECT_EQ(report.skipped_stored_quantized, 0);
  for (const FormatWeightError& format : report.formats) {
    const std::string name(quant::quant_format_name(format.format));
    EXPECT_GT(format.layers, 0) << name;
    EXPECT_GT(format.median, 0.0) << name;
    EXPECT_GE(format.max, format.median) << name;
    ASSERT_EQ(format.worst.size(), 3u) << name;
    EXPECT_EQ(format.worst[0].relative_error, format.max) << name;
    EXPECT_GE(format.worst[1].relative_error, format.worst[2].relative_error) << name;
  }
  EXPECT_EQ(report.formats[0].layers, report.formats[1].layers);
  EXPECT_LT(report.formats[0].max, report.formats[1].median);  // int8 below nf4

  // The worst layer's error, measured again from the checkpoint tensor.
  const LayerWeightError& worst = report.formats[0].worst[0];
  const ModelComponent component =
      worst.component == "transformer" ? ModelComponent::transformer : ModelComponent::text_encoder;
  const SafetensorsCheckpoint checkpoint = model.open_weights(component);
  // The tiny model stores canonical names, so the module names its tensor.
  ASSERT_TRUE(checkpoint.contains(worst.module + ".weight")) << worst.module;
  const Tensor weight = checkpoint.tensor(worst.module + ".weight");
  EXPECT_DOUBLE_EQ(relative_weight_error(weight, quant::QuantFormat::int8), worst.relative_error);
}

TEST_F(StrategyBenchModelTest, OutOfMemoryIsRecordedAndRunContinues) {
  const ModelDirectory model = ModelDirectory::open(root_ / "model");
  const std::vector<BenchConfiguration> configurations = strategy_configurations(
      {memory::parse_strategy("int8+resident")}, PipelineLoadOptions{}, small_request());
  // The first allocation from here on is the reference's first weight.
  current_allocator(Device::cpu()).fail_allocation_after(1);
  const std::vector<BenchRow> rows = run_configurations(model, configurations, 1);
  ASSERT_EQ(rows.size(), 2u);

  EXPECT_TRUE(rows[0].reference);
  EXPECT_FALSE(rows[0].success);
  EXPECT_TRUE(rows[0].out_of_memory);
  EXPECT_FALSE(rows[0].error.empty());
  EXPECT_FALSE(rows[0].psnr_db.has_value());

  EXPECT_FALSE(rows[1].reference);
  EXPECT_TRUE(rows[1].success) << rows[1].error;
  EXPECT_EQ(rows[1].weight_format, "int8");
  EXPECT_GT(rows[1].weight_bytes, 0);
  EXPECT_GE(rows[1].peak_allocated_bytes, rows[1].weight_bytes);
  EXPECT_GE(rows[1].peak_reserved_bytes, rows[1].peak_allocated_bytes);
  EXPECT_GT(rows[1].step_s, 0.0);
  EXPECT_EQ(rows[1].output.width(), 32);
  // Nothing to compare with when the reference failed.
  EXPECT_FALSE(rows[1].psnr_db.has_value());
  EXPECT_FALSE(rows[1].ssim.has_value());
}

}  // namespace
}  // namespace ethereal
