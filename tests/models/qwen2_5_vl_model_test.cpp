// The Qwen2.5-VL vision tower and language model on the tiny seeded weights, compared with the
// PyTorch reference vectors; loading in both tensor-name layouts; dry runs.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "io/safetensors_checkpoint.h"
#include "io/safetensors_writer.h"
#include "models/qwen2_5_vl/tensor_names.h"
#include "models/qwen2_5_vl/text_encoder.h"
#include "qwen2_5_vl_test_support.h"
#include "runtime/allocator.h"
#include "support/errors.h"
#include "support/files.h"
#include "support/tensor_compare.h"

namespace ethereal {
namespace {

using qwen2_5_vl_test::grids_of;
using qwen2_5_vl_test::image_from_hwc;
using qwen2_5_vl_test::int64_values;
using qwen2_5_vl_test::text_encoder_case;
using qwen2_5_vl_test::tiny_text_encoder_dir;
using test_support::error_message;
using test_support::max_abs;
using test_support::max_abs_diff;
using test_support::TemporaryDirectory;

// The reference is float32 on one thread; its own float32-versus-float64 gap is below 2.5e-6.
constexpr float kF32Tolerance = 1e-4f;

class Qwen25VlModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    vision_ = new SafetensorsFile(SafetensorsFile::open(text_encoder_case("vision")));
    language_ = new SafetensorsFile(SafetensorsFile::open(text_encoder_case("language_model")));
  }
  static void TearDownTestSuite() {
    delete vision_;
    delete language_;
  }

  static Qwen25VlTextEncoder load_tiny(ModelPrecision precision) {
    return Qwen25VlTextEncoder::load(tiny_text_encoder_dir(), precision);
  }
  static std::vector<ImageGrid> grids() {
    return grids_of(vision_->tensor("input.image_grid_thw"));
  }
  static std::vector<std::int64_t> input_ids() {
    return int64_values(language_->tensor("input.input_ids"));
  }
  // The two reference images through the processor.
  static std::vector<ProcessedImage> processed_images() {
    return {process_qwen2vl_image(image_from_hwc(vision_->tensor("processor.image0_uint8")), {}),
            process_qwen2vl_image(image_from_hwc(vision_->tensor("processor.image1_uint8")), {})};
  }
  static Tensor expected_hidden() {
    return language_->tensor("output.last_hidden_state").view({-1, 32});
  }

  static SafetensorsFile* vision_;
  static SafetensorsFile* language_;
};

SafetensorsFile* Qwen25VlModelTest::vision_ = nullptr;
SafetensorsFile* Qwen25VlModelTest::language_ = nullptr;

TEST_F(Qwen25VlModelTest, VisionTowerMatchesReference) {
  const Qwen25VlTextEncoder encoder = load_tiny(ModelPrecision::f32());
  const std::vector<ImageGrid> image_grids = grids();
  const Tensor embeds = encoder.encode_images(vision_->tensor("input.pixel_values"), image_grids);
  const Tensor expected = vision_->tensor("output.image_embeds");
  ASSERT_EQ(embeds.shape(), expected.shape());
  EXPECT_EQ(embeds.dtype(), DType::f32);
  const float error = max_abs_diff(embeds, expected);
  RecordProperty("max_abs_error", std::to_string(error));
  EXPECT_LE(error, kF32Tolerance);
}

TEST_F(Qwen25VlModelTest, LanguageModelMatchesReference) {
  const Qwen25VlTextEncoder encoder = load_tiny(ModelPrecision::f32());
  const std::vector<std::int64_t> ids = input_ids();
  const std::vector<ImageGrid> image_grids = grids_of(language_->tensor("input.image_grid_thw"));
  const Tensor positions = mrope_position_ids(ids, image_grids, encoder.config());
  const Tensor hidden = encoder.forward(ids, language_->tensor("input.image_embeds"), positions);
  ASSERT_EQ(hidden.shape(), (Shape{51, 32}));
  const float error = max_abs_diff(hidden, expected_hidden());
  RecordProperty("max_abs_error", std::to_string(error));
  EXPECT_LE(error, kF32Tolerance);

  // The reference's own position ids give the same result.
  const Tensor reference_positions = language_->tensor("intermediate.position_ids");
  const Tensor again =
      encoder.forward(ids, language_->tensor("input.image_embeds"), reference_positions);
  EXPECT_EQ(max_abs_diff(again, hidden), 0.0f);
}

TEST_F(Qwen25VlModelTest, EmbeddingsSpliceImageRows) {
  const SafetensorsCheckpoint checkpoint =
      SafetensorsCheckpoint::open(tiny_text_encoder_dir() / "model.safetensors");
  WeightLoader loader(checkpoint, qwen25vl_legacy_tensor_name, "text encoder");
  const Qwen25VlConfig config = Qwen25VlConfig::from_file(tiny_text_encoder_dir() / "config.json");
  const Qwen25VlLanguageModel model =
      Qwen25VlLanguageModel::load(loader, config, ModelPrecision::f32());
  const Tensor embeds = model.embed(input_ids(), language_->tensor("input.image_embeds"));
  EXPECT_EQ(max_abs_diff(embeds, language_->tensor("intermediate.inputs_embeds")), 0.0f);
}

TEST_F(Qwen25VlModelTest, EncodePromptFromImagesMatchesReference) {
  const Qwen25VlTextEncoder encoder = load_tiny(ModelPrecision::f32());
  const std::vector<ProcessedImage> images = processed_images();
  const Tensor hidden = encoder.encode_prompt(input_ids(), images);
  ASSERT_EQ(hidden.shape(), (Shape{51, 32}));
  EXPECT_LE(max_abs_diff(hidden, expected_hidden()), kF32Tolerance);
}

TEST_F(Qwen25VlModelTest, Bf16RunStaysCloseToReference) {
  // bf16 weights and activations: about 3 significant digits per rounding, over 4 vision
  // blocks and 2 decoder layers. The outputs are of order 1 to 4 (RMSNorm-scaled), so the
  // bound is 5 % of the largest reference value.
  const Qwen25VlTextEncoder encoder = load_tiny(ModelPrecision::bf16());
  const std::vector<ProcessedImage> images = processed_images();
  const Tensor expected = expected_hidden();
  const Tensor hidden = encoder.encode_prompt(input_ids(), images);
  EXPECT_EQ(hidden.dtype(), DType::bf16);
  const float error = max_abs_diff(hidden, expected);
  RecordProperty("max_abs_error", std::to_string(error));
  RecordProperty("max_abs_expected", std::to_string(max_abs(expected)));
  EXPECT_LE(error, 0.05f * max_abs(expected)) << "max |error| " << error;

  const std::vector<ImageGrid> image_grids = grids();
  const Tensor embeds = encoder.encode_images(vision_->tensor("input.pixel_values"), image_grids);
  const Tensor expected_embeds = vision_->tensor("output.image_embeds");
  const float vision_error = max_abs_diff(embeds, expected_embeds);
  RecordProperty("vision_max_abs_error", std::to_string(vision_error));
  RecordProperty("vision_max_abs_expected", std::to_string(max_abs(expected_embeds)));
  EXPECT_LE(vision_error, 0.05f * max_abs(expected_embeds)) << "max |error| " << vision_error;
}

TEST_F(Qwen25VlModelTest, QueryTileDoesNotChangeResult) {
  Qwen25VlTextEncoder encoder = load_tiny(ModelPrecision::f32());
  const std::vector<ProcessedImage> images = processed_images();
  const Tensor reference = encoder.encode_prompt(input_ids(), images);
  encoder.set_options({.attention_query_tile = 3});
  const Tensor tiled = encoder.encode_prompt(input_ids(), images);
  EXPECT_LE(max_abs_diff(tiled, reference), 1e-5f);
}

TEST_F(Qwen25VlModelTest, NestedLayoutLoadsSameWeights) {
  // The tiny weights saved under the newer transformers names, plus an lm_head to ignore.
  const SafetensorsCheckpoint legacy =
      SafetensorsCheckpoint::open(tiny_text_encoder_dir() / "model.safetensors");
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : legacy.names()) {
    const bool vision = name.rfind("visual.", 0) == 0;
    const std::string renamed = vision ? "model." + name : "model.language_model." + name.substr(6);
    tensors.emplace_back(renamed, legacy.tensor(name));
  }
  tensors.emplace_back("lm_head.weight", Tensor::zeros({640, 32}, DType::f32));
  TemporaryDirectory directory;
  write_safetensors(directory / "model.safetensors", tensors);
  std::filesystem::copy_file(tiny_text_encoder_dir() / "config.json", directory / "config.json");

  const Qwen25VlTextEncoder nested =
      Qwen25VlTextEncoder::load(directory.path(), ModelPrecision::f32());
  const Qwen25VlTextEncoder reference = load_tiny(ModelPrecision::f32());
  const std::vector<ProcessedImage> images = processed_images();
  EXPECT_EQ(max_abs_diff(nested.encode_prompt(input_ids(), images),
                         reference.encode_prompt(input_ids(), images)),
            0.0f);
}

TEST_F(Qwen25VlModelTest, ReportsMissingAndUnexpectedTensors) {
  const SafetensorsCheckpoint legacy =
      SafetensorsCheckpoint::open(tiny_text_encoder_dir() / "model.safetensors");
  const Qwen25VlConfig config = Qwen25VlConfig::from_file(tiny_text_encoder_dir() / "config.json");
  for (const bool drop : {true, false}) {
    SCOPED_TRACE(drop ? "missing" : "unexpected");
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const std::string& name : legacy.names()) {
      if (!(drop && name == "visual.blocks.2.attn.qkv.bias")) {
        tensors.emplace_back(name, legacy.tensor(name));
      }
    }
    if (!drop) {
      tensors.emplace_back("visual.blocks.4.norm1.weight", Tensor::zeros({32}, DType::f32));
    }
    TemporaryDirectory directory;
    write_safetensors(directory / "model.safetensors", tensors);
    const SafetensorsCheckpoint checkpoint =
        SafetensorsCheckpoint::open(directory / "model.safetensors");
    const std::string message = error_message(
        [&] { Qwen25VlTextEncoder::load(checkpoint, config, ModelPrecision::f32()); });
    EXPECT_NE(message.find(drop ? "\"visual.blocks.2.attn.qkv.bias\" is missing"
                                : "\"visual.blocks.4.norm1.weight\""),
              std::string::npos)
        << message;
  }
}

TEST_F(Qwen25VlModelTest, RejectsInputsThatDoNotFit) {
  const Qwen25VlTextEncoder encoder = load_tiny(ModelPrecision::f32());
  const std::vector<ImageGrid> image_grids = grids();
  std::string message = error_message([&] {
    encoder.encode_images(vision_->tensor("input.pixel_values").narrow(0, 0, 72), image_grids);
  });
  EXPECT_NE(message.find("need [76, 1176]"), std::string::npos) << message;

  const std::vector<std::int64_t> ids = input_ids();
  const Tensor positions = mrope_position_ids(ids, image_grids, encoder.config());
  message = error_message([&] {
    encoder.forward(ids, language_->tensor("input.image_embeds").narrow(0, 0, 18), positions);
  });
  EXPECT_NE(message.find("19 image tokens (id 630)"), std::string::npos) << message;
  EXPECT_NE(message.find("expected [19, 32]"), std::string::npos) << message;

  std::vector<std::int64_t> bad_ids = ids;
  bad_ids[3] = 640;
  message = error_message(
      [&] { encoder.forward(bad_ids, language_->tensor("input.image_embeds"), positions); });
  EXPECT_NE(message.find("token id 640 at position 3"), std::string::npos) << message;
}

TEST_F(Qwen25VlModelTest, DryRunStatisticsEqualRealRun) {
  const SafetensorsCheckpoint checkpoint =
      SafetensorsCheckpoint::open(tiny_text_encoder_dir() / "model.safetensors");
  const Qwen25VlConfig config = Qwen25VlConfig::from_file(tiny_text_encoder_dir() / "config.json");
  const std::vector<ProcessedImage> images = processed_images();
  const std::vector<std::int64_t> ids = input_ids();
  for (const ModelPrecision precision : {ModelPrecision::f32(), ModelPrecision::bf16()}) {
    SCOPED_TRACE(dtype_name(precision.compute_dtype));
    auto run = [&](bool dry) {
      CpuCachingAllocator allocator({.dry_run = dry});
      {
        ScopedAllocator scope(allocator);
        const Qwen25VlTextEncoder encoder =
            Qwen25VlTextEncoder::load(checkpoint, config, precision);
        const Tensor hidden = encoder.encode_prompt(ids, images);
        EXPECT_EQ(hidden.is_dry(), dry);
        EXPECT_EQ(hidden.shape(), (Shape{51, 32}));
      }
      return allocator.stats();
    };
    const AllocatorStats real = run(false);
    const AllocatorStats dry = run(true);
    EXPECT_GT(real.allocation_count, 100);
    EXPECT_EQ(dry.allocation_count, real.allocation_count);
    EXPECT_EQ(dry.requested_bytes.peak, real.requested_bytes.peak);
    EXPECT_EQ(dry.allocated_bytes.peak, real.allocated_bytes.peak);
    EXPECT_EQ(dry.reserved_bytes.peak, real.reserved_bytes.peak);
    EXPECT_EQ(dry.cache_hits, real.cache_hits);
    EXPECT_EQ(dry.allocated_bytes.current, 0);
  }
}

}  // namespace
}  // namespace ethereal
