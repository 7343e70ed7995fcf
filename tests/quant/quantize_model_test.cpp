#include "pipeline/quantize_model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "io/model_directory.h"
#include "io/safetensors_checkpoint.h"
#include "models/qwen_image/transformer.h"
#include "models/qwen_image/transformer_config.h"
#include "models/qwen_image/transformer_tensor_names.h"
#include "models/tiny_model.h"
#include "models/weight_loader.h"
#include "pipeline/edit_pipeline.h"
#include "pipeline/image_quality.h"
#include "quant/quantize.h"
#include "quant/stored_weight.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "support/files.h"
#include "support/images.h"

namespace ethereal {
namespace {

namespace fs = std::filesystem;
using quant::QuantFormat;

constexpr QuantFormat kFormats[] = {QuantFormat::fp8_e4m3, QuantFormat::nf4, QuantFormat::int8};

EditRequest small_request() {
  EditRequest request;
  request.images = {test_support::gradient_image(48, 40, 40, 10)};
  request.prompt = "turn the lights on";
  request.steps = 2;
  request.seed = 5;
  request.output_size = ImageSize{48, 32};
  return request;
}

class QuantizeModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = test_support::create_temporary_directory("quantize_model");
    write_tiny_model(root_ / "model", 3);
    for (QuantFormat format : kFormats) {
      QuantizeModelOptions options;
      options.model = root_ / "model";
      options.output = quantized(format);
      options.format = format;
      quantize_model(options);
    }
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  static fs::path quantized(QuantFormat format) {
    return root_ / ("model-" + std::string(quant::quant_format_name(format)));
  }

  // A scratch directory for one test.
  fs::path scratch() const {
    const fs::path path = root_ / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(path);
    fs::create_directories(path);
    return path;
  }

  static fs::path root_;
};

fs::path QuantizeModelTest::root_;

TEST_F(QuantizeModelTest, WritesLayoutsAndCopiesOtherFiles) {
  const std::map<QuantFormat, std::string> weight_dtype = {
      {QuantFormat::fp8_e4m3, "F8_E4M3"}, {QuantFormat::nf4, "U8"}, {QuantFormat::int8, "I8"}};
  for (QuantFormat format : kFormats) {
    SCOPED_TRACE(quant::quant_format_name(format));
    const ModelDirectory model = ModelDirectory::open(quantized(format));
    const SafetensorsCheckpoint transformer = model.open_weights(ModelComponent::transformer);
    const SafetensorsCheckpoint text_encoder = model.open_weights(ModelComponent::text_encoder);

    const TensorInfo& to_q = transformer.info("transformer_blocks.0.attn.to_q.weight");
    EXPECT_EQ(to_q.stored_dtype, weight_dtype.at(format));
    EXPECT_EQ(text_encoder.info("model.layers.0.self_attn.q_proj.weight").stored_dtype,
              weight_dtype.at(format));
    EXPECT_EQ(text_encoder.info("visual.blocks.0.attn.qkv.weight").stored_dtype,
              weight_dtype.at(format));
    // Layers outside the blocks, norms and biases keep the source dtype.
    EXPECT_EQ(transformer.info("img_in.weight").stored_dtype, "BF16");
    EXPECT_EQ(transformer.info("proj_out.weight").stored_dtype, "BF16");
    EXPECT_EQ(transformer.info("transformer_blocks.0.attn.to_q.bias").stored_dtype, "BF16");
    EXPECT_EQ(text_encoder.info("model.embed_tokens.weight").stored_dtype, "BF16");

    const quant::StoredWeight stored =
        quant::inspect_stored_weight(transformer, "transformer_blocks.0.attn.to_q.weight");
    EXPECT_EQ(stored.format(), format);
    EXPECT_EQ(stored.out_features, 32);
    EXPECT_EQ(stored.in_features, 32);
    if (format == QuantFormat::fp8_e4m3) {
      EXPECT_EQ(transformer.info("transformer_blocks.0.attn.to_q.scale_weight").shape, Shape{});
      EXPECT_TRUE(transformer.contains("scaled_fp8"));
      EXPECT_TRUE(text_encoder.contains("scaled_fp8"));
    } else {
      EXPECT_FALSE(transformer.contains("scaled_fp8"));
    }

    const SafetensorsMetadata& metadata = transformer.metadata();
    EXPECT_EQ(metadata.at("quantization_format"), quant::quant_format_name(format));
    EXPECT_EQ(metadata.at("quantized_by").rfind("ethereal quantize ", 0), 0u);
    EXPECT_EQ(metadata.at("format"), "pt");

    for (const char* file : {"model_index.json", "vae/diffusion_pytorch_model.safetensors",
                             "vae/config.json", "scheduler/scheduler_config.json",
                             "transformer/config.json", "text_encoder/config.json"}) {
      EXPECT_EQ(test_support::read_file(quantized(format) / file),
                test_support::read_file(root_ / "model" / file))
          << file;
    }
    EXPECT_EQ(test_support::file_names(quantized(format) / "tokenizer"),
              test_support::file_names(root_ / "model" / "tokenizer"));
    EXPECT_LT(fs::file_size(quantized(format) / "transformer/diffusion_pytorch_model.safetensors"),
              fs::file_size(root_ / "model/transformer/diffusion_pytorch_model.safetensors"));
  }
}

// Loading the written checkpoint in its format gives the same bytes as quantising the bf16
// checkpoint while loading it (fp8 with per-tensor scales, as the file stores them).
TEST_F(QuantizeModelTest, StoredLayersEqualLoadTimeQuantisation) {
  const SafetensorsCheckpoint source =
      ModelDirectory::open(root_ / "model").open_weights(ModelComponent::transformer);
  for (QuantFormat format : kFormats) {
    SCOPED_TRACE(quant::quant_format_name(format));
    const SafetensorsCheckpoint stored =
        ModelDirectory::open(quantized(format)).open_weights(ModelComponent::transformer);
    WeightLoadOptions options;
    options.quant.format = format;
    options.quant.fp8_scales = quant::ScaleGranularity::per_tensor;
    WeightLoader from_bf16(source, comfy_transformer_tensor_name, "transformer", options);
    WeightLoader from_stored(stored, comfy_transformer_tensor_name, "transformer", options);
    const std::vector<std::tuple<std::string, std::int64_t, std::int64_t>> layers = {
        {"transformer_blocks.1.img_mlp.net.0.proj", 128, 32},
        {"transformer_blocks.2.txt_mod.1", 192, 32}};
    for (const auto& [module, out, in] : layers) {
      const LinearLayer expected = from_bf16.linear(module, out, in, true, DType::bf16);
      const LinearLayer actual = from_stored.linear(module, out, in, true, DType::bf16);
      ASSERT_TRUE(actual.is_quantized()) << module;
      const quant::QuantizedWeight& a = actual.quantized().weight();
      const quant::QuantizedWeight& e = expected.quantized().weight();
      ASSERT_EQ(a.values.nbytes(), e.values.nbytes());
      EXPECT_EQ(std::memcmp(a.values.data(), e.values.data(), e.values.nbytes()), 0) << module;
      EXPECT_EQ(quant::dequantize(a).to_floats(), quant::dequantize(e).to_floats()) << module;
      EXPECT_EQ(actual.quantized().bias().to_floats(), expected.quantized().bias().to_floats());
    }
  }
}

// An edit with the quantised directory (layers used as stored) stays close to the bf16 edit.
// Measured on this tiny random model with 2 steps: fp8 48.7 dB, int8 48.8 dB, nf4 42.8 dB; the
// bounds leave about 8 dB of margin.
TEST_F(QuantizeModelTest, EditMatchesBf16Edit) {
  const EditRequest request = small_request();
  const EditResult reference =
      EditPipeline::load(ModelDirectory::open(root_ / "model"), ModelPrecision::bf16())
          .run(request);
  const std::map<QuantFormat, double> min_psnr = {
      {QuantFormat::fp8_e4m3, 40.0}, {QuantFormat::int8, 40.0}, {QuantFormat::nf4, 35.0}};
  for (QuantFormat format : kFormats) {
    PipelineLoadOptions options;
    options.quant.format = format;
    options.quant.fp8_scales = quant::ScaleGranularity::per_tensor;
    const EditResult result =
        EditPipeline::load(ModelDirectory::open(quantized(format)), options).run(request);
    ASSERT_EQ(result.image.width(), reference.image.width());
    const double db = psnr(result.image, reference.image);
    RecordProperty(std::string("psnr_") + std::string(quant::quant_format_name(format)),
                   std::to_string(db));
    EXPECT_GE(db, min_psnr.at(format)) << quant::quant_format_name(format);
    EXPECT_NE(result.image, reference.image) << "the quantised weights are in use";
  }
}

TEST_F(QuantizeModelTest, KeepLeavesModulesUnquantised) {
  const fs::path output = scratch() / "kept";
  QuantizeModelOptions options;
  options.model = root_ / "model";
  options.output = output;
  options.format = QuantFormat::int8;
  options.keep = {"transformer_blocks.0", "model.layers.1.mlp.down_proj"};
  const QuantizeModelReport report = quantize_model(options);
  ASSERT_EQ(report.components.size(), 2u);
  const ModelDirectory model = ModelDirectory::open(output);
  const SafetensorsCheckpoint transformer = model.open_weights(ModelComponent::transformer);
  const SafetensorsCheckpoint text_encoder = model.open_weights(ModelComponent::text_encoder);
  EXPECT_EQ(transformer.info("transformer_blocks.0.attn.to_q.weight").stored_dtype, "BF16");
  EXPECT_EQ(transformer.info("transformer_blocks.1.attn.to_q.weight").stored_dtype, "I8");
  EXPECT_EQ(text_encoder.info("model.layers.1.mlp.down_proj.weight").stored_dtype, "BF16");
  EXPECT_EQ(text_encoder.info("model.layers.1.mlp.up_proj.weight").stored_dtype, "I8");
  EXPECT_EQ(transformer.metadata().at("quantization_keep"),
            "transformer_blocks.0,model.layers.1.mlp.down_proj");
}

TEST_F(QuantizeModelTest, RejectsBadOutputsWithoutWriting) {
  const fs::path directory = scratch();
  QuantizeModelOptions options;
  options.model = root_ / "model";
  options.format = QuantFormat::fp8_e4m3;

  options.output = directory / "missing_parent" / "out";
  EXPECT_THROW(quantize_model(options), InvalidInputError);
  options.output = root_ / "model";
  options.force = true;
  EXPECT_THROW(quantize_model(options), InvalidInputError) << "the output is the source";
  options.output = root_;
  EXPECT_THROW(quantize_model(options), InvalidInputError) << "the output contains the source";
  options.force = false;
  options.output = directory / "out";
  options.keep = {"transformer_blocks.99"};
  try {
    quantize_model(options);
    FAIL() << "a --keep entry that matches nothing was accepted";
  } catch (const InvalidInputError& error) {
    EXPECT_NE(std::string(error.what()).find("transformer_blocks.99"), std::string::npos)
        << error.what();
  }
  EXPECT_TRUE(test_support::file_names(directory).empty());
  EXPECT_TRUE(fs::is_directory(root_ / "model" / "transformer"));
}

TEST_F(QuantizeModelTest, ForceReplacesExistingOutput) {
  const fs::path output = scratch() / "out";
  fs::create_directories(output);
  std::ofstream(output / "old.txt") << "previous content";
  QuantizeModelOptions options;
  options.model = root_ / "model";
  options.output = output;
  options.format = QuantFormat::nf4;
  try {
    quantize_model(options);
    FAIL() << "an existing output was replaced without force";
  } catch (const InvalidInputError& error) {
    EXPECT_NE(std::string(error.what()).find("--force"), std::string::npos) << error.what();
  }
  EXPECT_EQ(test_support::file_names(output), std::vector<std::string>{"old.txt"});

  options.force = true;
  quantize_model(options);
  EXPECT_FALSE(fs::exists(output / "old.txt"));
  EXPECT_TRUE(fs::exists(output / "transformer" / "diffusion_pytorch_model.safetensors"));
  EXPECT_EQ(test_support::file_names(output.parent_path()), std::vector<std::string>{"out"})
      << "no temporary or moved-aside directory is left";
}

// An allocation failure in the middle of writing leaves neither the output nor a temporary
// directory, and an existing output stays as it was.
TEST_F(QuantizeModelTest, FailureLeavesNoOutput) {
  const fs::path directory = scratch();
  const fs::path existing = directory / "existing";
  fs::create_directories(existing);
  std::ofstream(existing / "old.txt") << "previous content";
  for (const fs::path& output : {directory / "new", existing}) {
    QuantizeModelOptions options;
    options.model = root_ / "model";
    options.output = output;
    options.format = QuantFormat::int8;
    options.force = true;
    CpuCachingAllocator allocator;
    allocator.fail_allocation_after(40);
    {
      ScopedAllocator scope(allocator);
      EXPECT_THROW(quantize_model(options), OutOfMemoryError) << output;
    }
    EXPECT_EQ(test_support::file_names(directory), std::vector<std::string>{"existing"});
    EXPECT_EQ(test_support::file_names(existing), std::vector<std::string>{"old.txt"});
  }
}

// Quantising an already quantised directory decodes its layers first.
TEST_F(QuantizeModelTest, RequantisesQuantisedSource) {
  const fs::path output = scratch() / "from-fp8";
  QuantizeModelOptions options;
  options.model = quantized(QuantFormat::fp8_e4m3);
  options.output = output;
  options.format = QuantFormat::int8;
  quantize_model(options);
  const SafetensorsCheckpoint transformer =
      ModelDirectory::open(output).open_weights(ModelComponent::transformer);
  EXPECT_FALSE(transformer.contains("scaled_fp8"));
  EXPECT_FALSE(transformer.contains("transformer_blocks.0.attn.to_q.scale_weight"));
  const std::string name = "transformer_blocks.0.attn.to_q.weight";
  const SafetensorsCheckpoint fp8 = ModelDirectory::open(quantized(QuantFormat::fp8_e4m3))
                                        .open_weights(ModelComponent::transformer);
  const std::vector<float> from_fp8 =
      quant::decode_stored_weight(fp8, quant::inspect_stored_weight(fp8, name), DType::f32)
          .to_floats();
  const quant::QuantizedWeight int8 =
      quant::read_stored_weight(transformer, quant::inspect_stored_weight(transformer, name));
  const std::vector<float> scales = int8.scales.to_floats();
  const std::vector<float> decoded = quant::dequantize(int8).to_floats();
  for (std::size_t i = 0; i < decoded.size(); ++i) {
    // int8 rounds to half a step of its row's scale.
    EXPECT_LE(std::fabs(decoded[i] - from_fp8[i]), 0.5f * scales[i / 32] * 1.0001f) << i;
  }
}

// Loading the transformer with quantisation never allocates more than the loaded model plus two
// bf16 copies of its largest linear weight (measured with the allocator's statistics).
TEST_F(QuantizeModelTest, LoadPeakStaysNearLoadedSize) {
  const ModelDirectory model = ModelDirectory::open(root_ / "model");
  const SafetensorsCheckpoint checkpoint = model.open_weights(ModelComponent::transformer);
  const QwenImageTransformerConfig config =
      QwenImageTransformerConfig::from_file(*model.config_path(ModelComponent::transformer));
  std::int64_t largest = 0;
  for (const std::string& name : checkpoint.names()) {
    const TensorInfo& info = checkpoint.info(name);
    if (info.shape.size() == 2) {
      largest = std::max(largest, info.shape[0] * info.shape[1]);
    }
  }
  const std::int64_t largest_bf16 = 2 * largest;
  const std::vector<std::tuple<std::string, fs::path, std::optional<QuantFormat>>> cases = {
      {"bf16", root_ / "model", std::nullopt},
      {"fp8 while loading", root_ / "model", QuantFormat::fp8_e4m3},
      {"nf4 while loading", root_ / "model", QuantFormat::nf4},
      {"int8 while loading", root_ / "model", QuantFormat::int8},
      {"fp8 as stored", quantized(QuantFormat::fp8_e4m3), QuantFormat::fp8_e4m3},
      {"nf4 as stored", quantized(QuantFormat::nf4), QuantFormat::nf4},
      {"int8 as stored", quantized(QuantFormat::int8), QuantFormat::int8},
      {"fp8 stored, loaded as bf16", quantized(QuantFormat::fp8_e4m3), std::nullopt},
      {"fp8 stored, loaded as nf4", quantized(QuantFormat::fp8_e4m3), QuantFormat::nf4},
  };
  for (const auto& [label, directory, format] : cases) {
    const SafetensorsCheckpoint weights =
        ModelDirectory::open(directory).open_weights(ModelComponent::transformer);
    WeightLoadOptions options;
    options.quant.format = format;
    options.quant.fp8_scales = quant::ScaleGranularity::per_tensor;
    CpuCachingAllocator allocator;
    std::int64_t loaded = 0;
    {
      ScopedAllocator scope(allocator);
      const QwenImageTransformer transformer = QwenImageTransformer::load(
          weights, config, ModelPrecision::bf16(), comfy_transformer_tensor_name, options);
      loaded = allocator.stats().allocated_bytes.current;
    }
    const std::int64_t peak = allocator.stats().allocated_bytes.peak;
    RecordProperty(label, fmt::format("loaded {} peak {}", loaded, peak));
    EXPECT_LE(peak, loaded + 2 * largest_bf16)
        << label << ": loaded " << loaded << " B, peak " << peak << " B, largest bf16 weight "
        << largest_bf16 << " B";
  }
}

}  // namespace
}  // namespace ethereal
