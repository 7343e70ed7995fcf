// Unit tests of the Qwen-Image transformer: configuration parsing, checkpoint loading and
// name mapping, RoPE positions and tables, the timestep features, and input validation.
// Parity with the PyTorch reference is in transformer_parity_test.cpp.
#include "models/qwen_image/transformer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "io/safetensors_writer.h"
#include "models/qwen_image/transformer_config.h"
#include "models/qwen_image/transformer_rope.h"
#include "models/qwen_image/transformer_tensor_names.h"
#include "models/qwen_image/transformer_timestep.h"
#include "models/transformer_test_support.h"
#include "support/errors.h"
#include "support/files.h"

namespace ethereal {
namespace {

using test_support::error_message;
using test_support::TemporaryDirectory;
using ::testing::HasSubstr;
using transformer_test::diffusers_tensor_shapes;
using transformer_test::pattern_tensor;

// A small configuration with every axis distinct: D = 16, head_dim 8, joint dim 12.
QwenImageTransformerConfig small_config() {
  QwenImageTransformerConfig config;
  config.patch_size = 2;
  config.in_channels = 8;
  config.out_channels = 3;
  config.num_layers = 2;
  config.attention_head_dim = 8;
  config.num_attention_heads = 2;
  config.joint_attention_dim = 12;
  config.axes_dims_rope = {2, 2, 4};
  return config;
}

std::string config_error(const nlohmann::json& document) {
  return error_message(
      [&] { QwenImageTransformerConfig::from_json(document, "transformer/config.json"); });
}

// ---------------------------------------------------------------------------------------------
// Configuration

TEST(TransformerConfigTest, ReadsTinyConfigFile) {
  const auto path = std::filesystem::path(ETHEREAL_TEST_DATA_DIR) / "models" / "tiny" /
                    "transformer" / "config.json";
  const QwenImageTransformerConfig config = QwenImageTransformerConfig::from_file(path);
  EXPECT_EQ(config.patch_size, 2);
  EXPECT_EQ(config.in_channels, 64);
  EXPECT_EQ(config.out_channels, 16);
  EXPECT_EQ(config.num_layers, 2);
  EXPECT_EQ(config.attention_head_dim, 16);
  EXPECT_EQ(config.num_attention_heads, 2);
  EXPECT_EQ(config.joint_attention_dim, 24);
  EXPECT_EQ(config.axes_dims_rope, (std::array<std::int64_t, 3>{4, 6, 6}));
  EXPECT_TRUE(config.zero_cond_t);
  EXPECT_EQ(config.inner_dim(), 32);
  EXPECT_EQ(config.output_dim(), 64);
}

TEST(TransformerConfigTest, MissingKeysKeepReleasedModelValues) {
  const QwenImageTransformerConfig config =
      QwenImageTransformerConfig::from_json(nlohmann::json::object(), "config.json");
  EXPECT_EQ(config.num_layers, 60);
  EXPECT_EQ(config.inner_dim(), 3072);
  EXPECT_EQ(config.mlp_dim(), 12288);
  EXPECT_EQ(config.joint_attention_dim, 3584);
  EXPECT_EQ(config.axes_dims_rope, (std::array<std::int64_t, 3>{16, 56, 56}));
  EXPECT_FALSE(config.zero_cond_t);
}

TEST(TransformerConfigTest, NullOutChannelsMeansInChannels) {
  const nlohmann::json document = {{"in_channels", 12}, {"out_channels", nullptr}};
  const QwenImageTransformerConfig config =
      QwenImageTransformerConfig::from_json(document, "config.json");
  EXPECT_EQ(config.out_channels, 12);
  EXPECT_EQ(config.output_dim(), 48);
}

TEST(TransformerConfigTest, IgnoresUnknownAndFalseFlags) {
  const nlohmann::json document = {{"_class_name", "QwenImageTransformer2DModel"},
                                   {"_diffusers_version", "0.36.0"},
                                   {"pooled_projection_dim", 768},
                                   {"guidance_embeds", false},
                                   {"use_additional_t_cond", false},
                                   {"use_layer3d_rope", false},
                                   {"zero_cond_t", true}};
  EXPECT_TRUE(QwenImageTransformerConfig::from_json(document, "config.json").zero_cond_t);
}

TEST(TransformerConfigTest, RejectsGuidanceEmbeds) {
  const std::string message = config_error({{"guidance_embeds", true}});
  EXPECT_THAT(message, HasSubstr("transformer/config.json"));
  EXPECT_THAT(message, HasSubstr("\"guidance_embeds\": true"));
  EXPECT_THAT(message, HasSubstr("not supported"));
}

TEST(TransformerConfigTest, RejectsLayeredModelFlags) {
  EXPECT_THAT(config_error({{"use_additional_t_cond", true}}),
              HasSubstr("\"use_additional_t_cond\": true"));
  EXPECT_THAT(config_error({{"use_layer3d_rope", true}}), HasSubstr("\"use_layer3d_rope\": true"));
}

TEST(TransformerConfigTest, RejectsAxesThatDoNotSumToHeadDim) {
  const std::string message =
      config_error({{"attention_head_dim", 64}, {"axes_dims_rope", {16, 56, 56}}});
  EXPECT_THAT(message, HasSubstr("sums to 128"));
  EXPECT_THAT(message, HasSubstr("attention_head_dim 64"));
}

TEST(TransformerConfigTest, RejectsOddOrMissingAxes) {
  EXPECT_THAT(config_error({{"attention_head_dim", 16}, {"axes_dims_rope", {3, 7, 6}}}),
              HasSubstr("positive even"));
  EXPECT_THAT(config_error({{"axes_dims_rope", {64, 64}}}), HasSubstr("list of 3 integers"));
  EXPECT_THAT(config_error({{"axes_dims_rope", "16,56,56"}}), HasSubstr("list of 3 integers"));
}

TEST(TransformerConfigTest, RejectsWrongTypesAndValues) {
  EXPECT_THAT(config_error({{"num_layers", "60"}}),
              HasSubstr("\"num_layers\" must be an integer, got \"60\""));
  EXPECT_THAT(config_error({{"patch_size", 2.5}}), HasSubstr("\"patch_size\" must be an integer"));
  EXPECT_THAT(config_error({{"zero_cond_t", 1}}),
              HasSubstr("\"zero_cond_t\" must be true or false"));
  EXPECT_THAT(config_error({{"num_attention_heads", 0}}),
              HasSubstr("\"num_attention_heads\" must be a positive integer, got 0"));
  EXPECT_THAT(config_error(nlohmann::json::array()), HasSubstr("expected a JSON object"));
}

TEST(TransformerConfigTest, RejectsConfigOfAnotherClass) {
  const std::string message = config_error({{"_class_name", "AutoencoderKLQwenImage"}});
  EXPECT_THAT(message, HasSubstr("AutoencoderKLQwenImage"));
  EXPECT_THAT(message, HasSubstr("QwenImageTransformer2DModel was expected"));
}

TEST(TransformerConfigTest, ReportsUnreadableFiles) {
  TemporaryDirectory directory;
  EXPECT_THAT(
      error_message([&] { QwenImageTransformerConfig::from_file(directory / "missing.json"); }),
      HasSubstr("cannot open"));
  const auto broken = directory / "config.json";
  std::ofstream(broken) << "{\"num_layers\": ";
  EXPECT_THAT(error_message([&] { QwenImageTransformerConfig::from_file(broken); }),
              HasSubstr("invalid JSON"));
}

// ---------------------------------------------------------------------------------------------
// Checkpoint loading and tensor names

class TransformerLoadingTest : public ::testing::Test {
 protected:
  // Writes every tensor of small_config(), renamed by `rename`, plus `extra`.
  std::filesystem::path write_checkpoint(
      const std::function<std::string(const std::string&)>& rename =
          [](const std::string& n) { return n; },
      std::vector<std::pair<std::string, Tensor>> extra = {}, const std::string& skip = "",
      const std::string& wrong_shape = "") {
    std::vector<std::pair<std::string, Tensor>> tensors;
    float seed = 0.0f;
    for (const auto& [name, shape] : diffusers_tensor_shapes(small_config())) {
      if (name == skip) {
        continue;
      }
      Shape stored = shape;
      if (name == wrong_shape) {
        stored.back() += 1;
      }
      tensors.emplace_back(rename ? rename(name) : name,
                           pattern_tensor(stored, seed += 1.0f, DType::bf16));
    }
    for (auto& entry : extra) {
      tensors.push_back(std::move(entry));
    }
    const auto path = directory_ / "transformer.safetensors";
    write_safetensors(path, tensors);
    return path;
  }

  TemporaryDirectory directory_;
};

TEST_F(TransformerLoadingTest, LoadsAllTensorsAndRuns) {
  const auto checkpoint = SafetensorsCheckpoint::open(write_checkpoint());
  // 13 top-level tensors and 32 per block.
  EXPECT_EQ(checkpoint.names().size(), 13u + 2u * 32u);
  const QwenImageTransformer model =
      QwenImageTransformer::load(checkpoint, small_config(), ModelPrecision::f32());

  TransformerInputs inputs;
  inputs.hidden_states = pattern_tensor({4 + 3, 8}, 1.0f);
  inputs.encoder_hidden_states = pattern_tensor({5, 12}, 2.0f);
  inputs.sigma = 0.5;
  inputs.img_shapes = {{1, 2, 2}, {1, 1, 3}};
  const Tensor out = model.forward(inputs);
  EXPECT_EQ(out.shape(), (Shape{7, 12}));
  EXPECT_EQ(out.dtype(), DType::f32);
  for (float value : out.to_floats()) {
    ASSERT_TRUE(std::isfinite(value));
  }
}

TEST_F(TransformerLoadingTest, ReportsMissingTensor) {
  const std::string missing = "transformer_blocks.1.attn.norm_added_k.weight";
  const auto checkpoint = SafetensorsCheckpoint::open(write_checkpoint({}, {}, missing));
  const std::string message = error_message(
      [&] { QwenImageTransformer::load(checkpoint, small_config(), ModelPrecision::f32()); });
  EXPECT_THAT(message, HasSubstr("transformer.safetensors"));
  EXPECT_THAT(message, HasSubstr("\"" + missing + "\" is missing"));
}

TEST_F(TransformerLoadingTest, ReportsWrongShape) {
  const auto checkpoint = SafetensorsCheckpoint::open(
      write_checkpoint({}, {}, "", "transformer_blocks.0.img_mod.1.weight"));
  const std::string message = error_message(
      [&] { QwenImageTransformer::load(checkpoint, small_config(), ModelPrecision::bf16()); });
  EXPECT_THAT(message, HasSubstr("\"transformer_blocks.0.img_mod.1.weight\" has shape [96, 17]"));
  EXPECT_THAT(message, HasSubstr("expects [96, 16]"));
}

TEST_F(TransformerLoadingTest, ReportsUnexpectedTensor) {
  std::vector<std::pair<std::string, Tensor>> extra;
  extra.emplace_back("transformer_blocks.2.attn.to_q.weight", pattern_tensor({16, 16}, 3.0f));
  const auto checkpoint = SafetensorsCheckpoint::open(write_checkpoint({}, std::move(extra)));
  const std::string message = error_message(
      [&] { QwenImageTransformer::load(checkpoint, small_config(), ModelPrecision::f32()); });
  EXPECT_THAT(message, HasSubstr("1 tensor(s) do not belong"));
  EXPECT_THAT(message, HasSubstr("transformer_blocks.2.attn.to_q.weight"));
}

TEST_F(TransformerLoadingTest, ComfyFileWithPrefixAndMarkerLoads) {
  std::vector<std::pair<std::string, Tensor>> extra;
  extra.emplace_back("model.diffusion_model.__index_timestep_zero__",
                     Tensor::empty({0}, DType::bf16));
  const auto checkpoint = SafetensorsCheckpoint::open(write_checkpoint(
      [](const std::string& name) { return "model.diffusion_model." + name; }, std::move(extra)));
  EXPECT_TRUE(checkpoint_sets_zero_cond_t(checkpoint));
  EXPECT_NO_THROW(QwenImageTransformer::load(checkpoint, small_config(), ModelPrecision::f32(),
                                             comfy_transformer_tensor_name));
  // Under the identity mapping the prefixed names are not diffusers names, so img_in is missing.
  EXPECT_THAT(error_message([&] {
                QwenImageTransformer::load(checkpoint, small_config(), ModelPrecision::f32());
              }),
              HasSubstr("\"img_in.weight\" is missing"));
}

TEST_F(TransformerLoadingTest, DetectsZeroDimensionalMarkerWithoutPrefix) {
  std::vector<std::pair<std::string, Tensor>> extra;
  extra.emplace_back("__index_timestep_zero__", Tensor::zeros({}, DType::f32));
  const auto checkpoint = SafetensorsCheckpoint::open(write_checkpoint({}, std::move(extra)));
  EXPECT_TRUE(checkpoint_sets_zero_cond_t(checkpoint));
  EXPECT_NO_THROW(QwenImageTransformer::load(checkpoint, small_config(), ModelPrecision::f32(),
                                             comfy_transformer_tensor_name));
}

TEST_F(TransformerLoadingTest, NoMarkerMeansNoZeroCondT) {
  const auto checkpoint = SafetensorsCheckpoint::open(write_checkpoint());
  EXPECT_FALSE(checkpoint_sets_zero_cond_t(checkpoint));
}

TEST(TransformerTensorNamesTest, ComfyMapStripsPrefixAndDropsMarker) {
  EXPECT_EQ(comfy_transformer_tensor_name("model.diffusion_model.img_in.weight"), "img_in.weight");
  EXPECT_EQ(comfy_transformer_tensor_name("transformer_blocks.3.attn.to_q.bias"),
            "transformer_blocks.3.attn.to_q.bias");
  EXPECT_EQ(comfy_transformer_tensor_name("__index_timestep_zero__"), std::nullopt);
  EXPECT_EQ(comfy_transformer_tensor_name("model.diffusion_model.__index_timestep_zero__"),
            std::nullopt);
  // Only the whole prefix is stripped.
  EXPECT_EQ(comfy_transformer_tensor_name("model.img_in.weight"), "model.img_in.weight");
}

// ---------------------------------------------------------------------------------------------
// RoPE positions and tables

TEST(TransformerRopeTest, CentresOddAndEvenGrids) {
  // Target 3 x 4 patches, one reference 4 x 3.
  const std::vector<RopePosition> positions = image_rope_positions({{1, 3, 4}, {1, 4, 3}});
  ASSERT_EQ(positions.size(), 24u);
  // Target rows -2, -1, 0 (the odd extent's extra row is negative), columns -2 ... 1.
  EXPECT_EQ(positions[0], (RopePosition{0, -2, -2}));
  EXPECT_EQ(positions[3], (RopePosition{0, -2, 1}));
  EXPECT_EQ(positions[4], (RopePosition{0, -1, -2}));
  EXPECT_EQ(positions[11], (RopePosition{0, 0, 1}));
  // The reference has frame position 1, rows -2 ... 1 and columns -2, -1, 0.
  EXPECT_EQ(positions[12], (RopePosition{1, -2, -2}));
  EXPECT_EQ(positions[14], (RopePosition{1, -2, 0}));
  EXPECT_EQ(positions[15], (RopePosition{1, -1, -2}));
  EXPECT_EQ(positions[23], (RopePosition{1, 1, 0}));
}

TEST(TransformerRopeTest, FramesOfAnImageCountFromItsIndex) {
  const std::vector<RopePosition> positions = image_rope_positions({{1, 1, 1}, {2, 1, 2}});
  ASSERT_EQ(positions.size(), 5u);
  EXPECT_EQ(positions[1], (RopePosition{1, -1, -1}));
  EXPECT_EQ(positions[2], (RopePosition{1, -1, 0}));
  EXPECT_EQ(positions[3], (RopePosition{2, -1, -1}));
}

TEST(TransformerRopeTest, TextStartsAfterLargestImage) {
  // max(h/2, w/2): target 4 x 6 -> 3, references 5 x 3 -> 2 and 9 x 2 -> 4. The largest
  // reference decides, not the target.
  EXPECT_EQ(text_rope_start({{1, 4, 6}, {1, 5, 3}, {1, 9, 2}}), 4);
  EXPECT_EQ(text_rope_start({{1, 4, 6}, {1, 5, 3}}), 3);
  EXPECT_EQ(text_rope_start({{1, 3, 3}}), 1);
  EXPECT_EQ(text_rope_start({{1, 1, 1}}), 0);
  EXPECT_EQ(text_rope_start({{1, 64, 64}}), 32);
}

TEST(TransformerRopeTest, RejectsEmptyOrDegenerateGrids) {
  EXPECT_THAT(error_message([] { image_rope_positions({}); }), HasSubstr("img_shapes is empty"));
  EXPECT_THAT(error_message([] {
                text_rope_start({{1, 0, 4}});
              }),
              HasSubstr("img_shapes[0] = (1, 0, 4)"));
}

// cos or sin of angle `angle` as the tables store it (an f32 angle).
double table_value(bool cosine, double position, double frequency) {
  const auto angle =
      static_cast<double>(static_cast<float>(position) * static_cast<float>(frequency));
  return cosine ? std::cos(angle) : std::sin(angle);
}

TEST(TransformerRopeTest, TablesRotateFrameHeightWidthGroups) {
  // axes (2, 2, 4): pairs [frame w=1 | height w=1 | width w=1, w=10000^(-1/2)].
  const QwenImageTransformerConfig config = small_config();
  const std::vector<PatchGrid> grids = {{1, 3, 5}, {1, 4, 2}, {1, 7, 3}};
  const RopeTables tables = rope_tables(grids, 6, config);
  ASSERT_EQ(tables.image_cos.shape(), (Shape{15 + 8 + 21, 4}));
  ASSERT_EQ(tables.image_sin.shape(), (Shape{44, 4}));
  ASSERT_EQ(tables.text_cos.shape(), (Shape{6, 4}));
  ASSERT_EQ(tables.text_sin.shape(), (Shape{6, 4}));

  const std::vector<double> frequencies = {1.0, 1.0, 1.0, 0.01};
  const std::vector<int> axis_of_pair = {0, 1, 2, 2};
  const std::vector<RopePosition> positions = image_rope_positions(grids);
  const std::vector<float> image_cos = tables.image_cos.to_floats();
  const std::vector<float> image_sin = tables.image_sin.to_floats();
  for (std::size_t token = 0; token < positions.size(); ++token) {
    for (std::size_t pair = 0; pair < 4; ++pair) {
      const double position = static_cast<double>(positions[token][axis_of_pair[pair]]);
      EXPECT_NEAR(image_cos[token * 4 + pair], table_value(true, position, frequencies[pair]), 1e-6)
          << "token " << token << " pair " << pair;
      EXPECT_NEAR(image_sin[token * 4 + pair], table_value(false, position, frequencies[pair]),
                  1e-6)
          << "token " << token << " pair " << pair;
    }
  }

  // Text positions start at max(7 / 2, 3 / 2) = 3 (the second reference) on every axis.
  const std::vector<float> text_cos = tables.text_cos.to_floats();
  const std::vector<float> text_sin = tables.text_sin.to_floats();
  for (std::size_t j = 0; j < 6; ++j) {
    const double position = 3.0 + static_cast<double>(j);
    for (std::size_t pair = 0; pair < 4; ++pair) {
      EXPECT_NEAR(text_cos[j * 4 + pair], table_value(true, position, frequencies[pair]), 1e-6);
      EXPECT_NEAR(text_sin[j * 4 + pair], table_value(false, position, frequencies[pair]), 1e-6);
    }
  }
}

TEST(TransformerRopeTest, FullModelFrequenciesSpanEachAxis) {
  const QwenImageTransformerConfig config;  // axes (16, 56, 56), 64 pairs
  const RopeTables tables = rope_tables({{1, 1, 2}}, 1, config);
  // Token 1 is at (0, -1, 0): the frame and width pairs do not rotate, the height pairs rotate
  // by -w_j with w_j = 10000^(-2j / 56).
  const std::vector<float> sin = tables.image_sin.to_floats();
  ASSERT_EQ(sin.size(), 128u);
  for (int pair = 0; pair < 64; ++pair) {
    const bool height = pair >= 8 && pair < 36;
    const double expected = height ? -std::sin(std::pow(10000.0, -2.0 * (pair - 8) / 56.0)) : 0.0;
    EXPECT_NEAR(sin[64 + pair], expected, 1e-6) << "pair " << pair;
  }
}

// ---------------------------------------------------------------------------------------------
// Timestep features

TEST(TransformerTimestepTest, SinusoidPutsCosineFirst) {
  const std::vector<float> features = timestep_sinusoid(0.5f);
  ASSERT_EQ(features.size(), 256u);
  for (int k = 0; k < 128; ++k) {
    const double angle = 500.0 * std::exp(-std::log(10000.0) * k / 128.0);
    // f32 angles near 500 carry errors of a few 1e-5 radians.
    EXPECT_NEAR(features[k], std::cos(angle), 1e-4) << "k " << k;
    EXPECT_NEAR(features[128 + k], std::sin(angle), 1e-4) << "k " << k;
  }
}

TEST(TransformerTimestepTest, SinusoidOfZeroIsOnesThenZeros) {
  const std::vector<float> features = timestep_sinusoid(0.0f);
  for (int k = 0; k < 128; ++k) {
    EXPECT_EQ(features[k], 1.0f);
    EXPECT_EQ(features[128 + k], 0.0f);
  }
}

TEST(TransformerTimestepTest, Bf16ModelRoundsSigma) {
  EXPECT_EQ(model_sigma(0.73, DType::bf16), 0.73046875f);
  EXPECT_EQ(model_sigma(0.73, DType::f32), 0.73f);
  EXPECT_EQ(model_sigma(1.0, DType::bf16), 1.0f);
  EXPECT_EQ(model_sigma(0.0, DType::bf16), 0.0f);
}

// ---------------------------------------------------------------------------------------------
// Forward input checks

class TransformerInputTest : public ::testing::Test {
 protected:
  TransformerInputTest()
      : model_(QwenImageTransformer::random(small_config(), ModelPrecision::f32(), 7)) {
    inputs_.hidden_states = pattern_tensor({6 + 2, 8}, 1.0f);
    inputs_.encoder_hidden_states = pattern_tensor({3, 12}, 2.0f);
    inputs_.sigma = 0.25;
    inputs_.img_shapes = {{1, 2, 3}, {1, 2, 1}};
  }

  std::string forward_error() {
    return error_message([&] { model_.forward(inputs_); });
  }

  QwenImageTransformer model_;
  TransformerInputs inputs_;
};

TEST_F(TransformerInputTest, BatchAxisIsOptional) {
  const Tensor plain = model_.forward(inputs_);
  ASSERT_EQ(plain.shape(), (Shape{8, 12}));
  inputs_.hidden_states = inputs_.hidden_states.unsqueeze(0);
  inputs_.encoder_hidden_states = inputs_.encoder_hidden_states.unsqueeze(0);
  const Tensor batched = model_.forward(inputs_);
  ASSERT_EQ(batched.shape(), (Shape{1, 8, 12}));
  EXPECT_EQ(batched.to_floats(), plain.to_floats());
}

TEST_F(TransformerInputTest, RejectsBatchOfTwo) {
  inputs_.hidden_states = pattern_tensor({2, 8, 8}, 1.0f);
  EXPECT_THAT(forward_error(), HasSubstr("batch size 2"));
}

TEST_F(TransformerInputTest, RejectsGridsThatMissTokens) {
  inputs_.img_shapes = {{1, 2, 3}};
  const std::string message = forward_error();
  EXPECT_THAT(message, HasSubstr("img_shapes describe 6 image tokens"));
  EXPECT_THAT(message, HasSubstr("hidden_states has 8"));
}

TEST_F(TransformerInputTest, RejectsWrongChannelCount) {
  inputs_.encoder_hidden_states = pattern_tensor({3, 13}, 2.0f);
  EXPECT_THAT(forward_error(), HasSubstr("encoder_hidden_states must be an f32 or bf16 tensor "
                                         "[tokens, 12]"));
}

TEST_F(TransformerInputTest, RejectsSigmaOutsideUnitInterval) {
  inputs_.sigma = 1.5;
  EXPECT_THAT(forward_error(), HasSubstr("sigma 1.5 is outside [0, 1]"));
  inputs_.sigma = std::nan("");
  EXPECT_THAT(forward_error(), HasSubstr("outside [0, 1]"));
}

TEST_F(TransformerInputTest, RejectsEmptyText) {
  inputs_.encoder_hidden_states = Tensor::empty({0, 12}, DType::f32);
  EXPECT_THAT(forward_error(), HasSubstr("at least one text token"));
}

TEST_F(TransformerInputTest, RejectsMaskOfWrongLengthOrType) {
  inputs_.text_mask = Tensor::zeros({4}, DType::uint8);
  EXPECT_THAT(forward_error(), HasSubstr("text_mask must be a uint8, int32 or int64 tensor [3]"));
  inputs_.text_mask = Tensor::zeros({3}, DType::f32);
  EXPECT_THAT(forward_error(), HasSubstr("text_mask"));
}

TEST_F(TransformerInputTest, MaskedTextTokensDoNotChangeOutput) {
  // A masked text token is ignored as a key: changing its features changes nothing for the
  // image tokens.
  std::vector<std::int64_t> mask_values = {1, 1, 0};
  Tensor mask = Tensor::empty({3}, DType::int64);
  std::copy(mask_values.begin(), mask_values.end(), mask.data_as<std::int64_t>());
  inputs_.text_mask = mask;
  const std::vector<float> first = model_.forward(inputs_).to_floats();
  Tensor changed = inputs_.encoder_hidden_states.clone();
  changed.narrow(0, 2, 1).copy_from(pattern_tensor({1, 12}, 9.0f));
  inputs_.encoder_hidden_states = changed;
  const std::vector<float> second = model_.forward(inputs_).to_floats();
  EXPECT_EQ(first, second);
}

TEST(TransformerRandomTest, SeedDeterminesWeights) {
  TransformerInputs inputs;
  inputs.hidden_states = pattern_tensor({5, 8}, 1.0f);
  inputs.encoder_hidden_states = pattern_tensor({2, 12}, 2.0f);
  inputs.sigma = 0.9;
  inputs.img_shapes = {{1, 1, 5}};
  const auto run = [&](std::uint64_t seed) {
    return QwenImageTransformer::random(small_config(), ModelPrecision::f32(), seed)
        .forward(inputs)
        .to_floats();
  };
  EXPECT_EQ(run(3), run(3));
  EXPECT_NE(run(3), run(4));
}

}  // namespace
}  // namespace ethereal
