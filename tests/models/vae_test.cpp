#include "models/qwen_image/vae.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "io/safetensors_writer.h"
#include "models/qwen_image/vae_tensor_names.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "support/errors.h"
#include "support/files.h"
#include "vae_test_support.h"

namespace ethereal {
namespace {

namespace fs = std::filesystem;
using test_support::error_message;
using test_support::TemporaryDirectory;
using vae_test::expect_close;
using vae_test::load_frame;
using vae_test::tiny_vae_dir;

// ---------------------------------------------------------------------------------------
// Configuration

nlohmann::json real_config_json() {
  return nlohmann::json::parse(R"({
    "_class_name": "AutoencoderKLQwenImage", "_diffusers_version": "0.34.0",
    "attn_scales": [], "base_dim": 96, "dim_mult": [1, 2, 4, 4], "dropout": 0.0,
    "num_res_blocks": 2, "temperal_downsample": [false, true, true], "z_dim": 16,
    "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]})");
}

TEST(VaeConfig, ReadsRealConfig) {
  const QwenImageVaeConfig config =
      QwenImageVaeConfig::from_json(real_config_json(), "vae/config.json");
  EXPECT_EQ(config.base_dim, 96);
  EXPECT_EQ(config.z_dim, 16);
  EXPECT_EQ(config.dim_mult, (std::vector<std::int64_t>{1, 2, 4, 4}));
  EXPECT_EQ(config.num_res_blocks, 2);
  EXPECT_EQ(config.temperal_downsample, (std::vector<bool>{false, true, true}));
  EXPECT_EQ(config.input_channels, 3);
  ASSERT_EQ(config.latents_std.size(), 16u);
  EXPECT_FLOAT_EQ(config.latents_mean[7], 1.5508f);
  EXPECT_FLOAT_EQ(config.latents_std[15], 1.9160f);
  EXPECT_EQ(config.spatial_factor(), 8);
  EXPECT_EQ(config.encoder_dims(), (std::vector<std::int64_t>{96, 96, 192, 384, 384}));
  EXPECT_EQ(config.decoder_dims(), (std::vector<std::int64_t>{384, 384, 384, 192, 96}));
  EXPECT_EQ(config.decoder_in_dim(0), 384);
  EXPECT_EQ(config.decoder_in_dim(1), 192);  // after the first up-sampling halved 384
  EXPECT_EQ(config.decoder_in_dim(2), 192);
  EXPECT_EQ(config.decoder_in_dim(3), 96);
  EXPECT_EQ(config.mid_dim(), 384);
  EXPECT_FALSE(config.encoder_stage_is_temporal(0));
  EXPECT_TRUE(config.encoder_stage_is_temporal(2));
  EXPECT_TRUE(config.decoder_stage_is_temporal(0));
  EXPECT_FALSE(config.decoder_stage_is_temporal(2));
}

TEST(VaeConfig, MissingKeysTakeDiffusersDefaults) {
  const QwenImageVaeConfig config = QwenImageVaeConfig::from_json(nlohmann::json::object(), "c");
  const QwenImageVaeConfig expected = QwenImageVaeConfig::qwen_image();
  EXPECT_EQ(config.base_dim, expected.base_dim);
  EXPECT_EQ(config.dim_mult, expected.dim_mult);
  EXPECT_EQ(config.latents_mean, expected.latents_mean);
  EXPECT_EQ(config.latents_std, expected.latents_std);
}

TEST(VaeConfig, ReadsTinyConfigFile) {
  const QwenImageVaeConfig config = QwenImageVaeConfig::from_file(tiny_vae_dir() / "config.json");
  EXPECT_EQ(config.base_dim, 4);
  EXPECT_EQ(config.dim_mult, (std::vector<std::int64_t>{1, 2, 4, 4}));
  EXPECT_EQ(config.decoder_in_dim(1), 8);
}

struct ConfigErrorCase {
  const char* name;
  std::function<void(nlohmann::json&)> edit;
  const char* expected_fragment;
};

TEST(VaeConfig, RejectsInvalidValuesNamingFileAndKey) {
  const std::vector<ConfigErrorCase> cases = {
      {"string base_dim", [](nlohmann::json& j) { j["base_dim"] = "96"; }, "\"base_dim\""},
      {"fractional base_dim", [](nlohmann::json& j) { j["base_dim"] = 9.5; }, "\"base_dim\""},
      {"zero z_dim", [](nlohmann::json& j) { j["z_dim"] = 0; }, "\"z_dim\""},
      {"attention scales", [](nlohmann::json& j) { j["attn_scales"] = {0.5}; }, "\"attn_scales\""},
      {"dim_mult not a list", [](nlohmann::json& j) { j["dim_mult"] = 4; }, "\"dim_mult\""},
      {"negative multiplier",
       [](nlohmann::json& j) {
         j["dim_mult"] = {1, -2, 4, 4};
       },
       "\"dim_mult\""},
      {"temporal flags count",
       [](nlohmann::json& j) {
         j["temperal_downsample"] = {true, true};
       },
       "\"temperal_downsample\" has 2 entries"},
      {"temporal flag type",
       [](nlohmann::json& j) {
         j["temperal_downsample"] = {0, 1, 1};
       },
       "\"temperal_downsample\""},
      {"no res blocks", [](nlohmann::json& j) { j["num_res_blocks"] = 0; }, "\"num_res_blocks\""},
      {"short mean",
       [](nlohmann::json& j) {
         j["latents_mean"] = {0.0, 1.0};
       },
       "\"latents_mean\""},
      {"zero std", [](nlohmann::json& j) { j["latents_std"][3] = 0.0; }, "\"latents_std\""},
      {"dropout", [](nlohmann::json& j) { j["dropout"] = 1.5; }, "\"dropout\""},
      {"input channels", [](nlohmann::json& j) { j["input_channels"] = 0; }, "\"input_channels\""},
      {"channels vanish",
       [](nlohmann::json& j) {
         j["base_dim"] = 1;
         j["dim_mult"] = {1, 1};
         j["temperal_downsample"] = {false};
       },
       "leaves no channels"},
      {"other class", [](nlohmann::json& j) { j["_class_name"] = "AutoencoderKLWan"; },
       "\"_class_name\""},
  };
  for (const ConfigErrorCase& c : cases) {
    nlohmann::json document = real_config_json();
    c.edit(document);
    const std::string message = error_message<Error>(
        [&] { QwenImageVaeConfig::from_json(document, "models/qwen/vae/config.json"); });
    EXPECT_NE(message.find("models/qwen/vae/config.json"), std::string::npos)
        << c.name << ": " << message;
    EXPECT_NE(message.find(c.expected_fragment), std::string::npos) << c.name << ": " << message;
  }
}

TEST(VaeConfig, RejectsMissingAndMalformedFiles) {
  const TemporaryDirectory directory("vae_config");
  const fs::path broken = directory / "config.json";
  std::ofstream(broken) << "{\"base_dim\": 96,";
  EXPECT_NE(
      error_message<Error>([&] { QwenImageVaeConfig::from_file(broken); }).find("invalid JSON"),
      std::string::npos);
  const fs::path missing = directory / "absent.json";
  const std::string message = error_message<Error>([&] { QwenImageVaeConfig::from_file(missing); });
  EXPECT_NE(message.find("absent.json"), std::string::npos) << message;
  EXPECT_THROW(QwenImageVaeConfig::from_file(missing), InvalidInputError);
}

// ---------------------------------------------------------------------------------------
// Tensor names. The expected names are built here from the module structure of diffusers'
// AutoencoderKLQwenImage and of the original Wan VAE, independently of the library's code.

struct NamedTensor {
  std::string diffusers;
  std::string wan;
  Shape shape;
};

class ExpectedTensors {
 public:
  explicit ExpectedTensors(const QwenImageVaeConfig& config) {
    const std::int64_t base = config.base_dim;
    const std::int64_t z = config.z_dim;
    const std::int64_t stages = static_cast<std::int64_t>(config.dim_mult.size());
    std::vector<std::int64_t> enc = {base};
    for (std::int64_t m : config.dim_mult)
      enc.push_back(base * m);
    conv("encoder.conv_in", "encoder.conv1", {base, config.input_channels, 3, 3, 3});
    std::int64_t index = 0;
    for (std::int64_t s = 0; s < stages; ++s) {
      std::int64_t in = enc[static_cast<std::size_t>(s)];
      const std::int64_t out = enc[static_cast<std::size_t>(s) + 1];
      for (std::int64_t r = 0; r < config.num_res_blocks; ++r, ++index) {
        residual("encoder.down_blocks." + std::to_string(index),
                 "encoder.downsamples." + std::to_string(index), in, out);
        in = out;
      }
      if (s + 1 < stages) {
        const std::string d = "encoder.down_blocks." + std::to_string(index);
        const std::string w = "encoder.downsamples." + std::to_string(index);
        conv(d + ".resample.1", w + ".resample.1", {out, out, 3, 3});
        if (config.temperal_downsample[static_cast<std::size_t>(s)]) {
          conv(d + ".time_conv", w + ".time_conv", {out, out, 3, 1, 1});
        }
        ++index;
      }
    }
    const std::int64_t mid = enc.back();
    mid_block("encoder", mid);
    add("encoder.norm_out.gamma", "encoder.head.0.gamma", {mid, 1, 1, 1});
    conv("encoder.conv_out", "encoder.head.2", {2 * z, mid, 3, 3, 3});
    conv("quant_conv", "conv1", {2 * z, 2 * z, 1, 1, 1});
    conv("post_quant_conv", "conv2", {z, z, 1, 1, 1});

    conv("decoder.conv_in", "decoder.conv1", {mid, z, 3, 3, 3});
    mid_block("decoder", mid);
    std::vector<std::int64_t> dec = {mid};
    for (auto it = config.dim_mult.rbegin(); it != config.dim_mult.rend(); ++it) {
      dec.push_back(base * *it);
    }
    std::int64_t wan_index = 0;
    for (std::int64_t s = 0; s < stages; ++s) {
      std::int64_t in = s == 0 ? dec[0] : dec[static_cast<std::size_t>(s)] / 2;
      const std::int64_t out = dec[static_cast<std::size_t>(s) + 1];
      for (std::int64_t r = 0; r <= config.num_res_blocks; ++r) {
        residual("decoder.up_blocks." + std::to_string(s) + ".resnets." + std::to_string(r),
                 "decoder.upsamples." + std::to_string(wan_index++), in, out);
        in = out;
      }
      if (s + 1 < stages) {
        const std::string d = "decoder.up_blocks." + std::to_string(s) + ".upsamplers.0";
        const std::string w = "decoder.upsamples." + std::to_string(wan_index++);
        conv(d + ".resample.1", w + ".resample.1", {out / 2, out, 3, 3});
        if (config.temperal_downsample[static_cast<std::size_t>(stages - 2 - s)]) {
          conv(d + ".time_conv", w + ".time_conv", {2 * out, out, 3, 1, 1});
        }
      }
    }
    add("decoder.norm_out.gamma", "decoder.head.0.gamma", {dec.back(), 1, 1, 1});
    conv("decoder.conv_out", "decoder.head.2", {config.input_channels, dec.back(), 3, 3, 3});
  }

  const std::vector<NamedTensor>& tensors() const { return tensors_; }

  std::map<std::string, Shape> diffusers_shapes() const {
    std::map<std::string, Shape> shapes;
    for (const NamedTensor& t : tensors_)
      shapes[t.diffusers] = t.shape;
    return shapes;
  }

 private:
  void add(std::string diffusers, std::string wan, Shape shape) {
    tensors_.push_back({std::move(diffusers), std::move(wan), std::move(shape)});
  }
  void conv(const std::string& d, const std::string& w, const Shape& weight) {
    add(d + ".weight", w + ".weight", weight);
    add(d + ".bias", w + ".bias", {weight[0]});
  }
  void residual(const std::string& d, const std::string& w, std::int64_t in, std::int64_t out) {
    add(d + ".norm1.gamma", w + ".residual.0.gamma", {in, 1, 1, 1});
    conv(d + ".conv1", w + ".residual.2", {out, in, 3, 3, 3});
    add(d + ".norm2.gamma", w + ".residual.3.gamma", {out, 1, 1, 1});
    conv(d + ".conv2", w + ".residual.6", {out, out, 3, 3, 3});
    if (in != out) {
      conv(d + ".conv_shortcut", w + ".shortcut", {out, in, 1, 1, 1});
    }
  }
  void mid_block(const std::string& side, std::int64_t c) {
    residual(side + ".mid_block.resnets.0", side + ".middle.0", c, c);
    const std::string d = side + ".mid_block.attentions.0";
    const std::string w = side + ".middle.1";
    add(d + ".norm.gamma", w + ".norm.gamma", {c, 1, 1});
    conv(d + ".to_qkv", w + ".to_qkv", {3 * c, c, 1, 1});
    conv(d + ".proj", w + ".proj", {c, c, 1, 1});
    residual(side + ".mid_block.resnets.1", side + ".middle.2", c, c);
  }

  std::vector<NamedTensor> tensors_;
};

TEST(VaeTensorNames, RealConfigHas194TensorsAnd127MParameters) {
  const ExpectedTensors expected(QwenImageVaeConfig::qwen_image());
  EXPECT_EQ(expected.tensors().size(), 194u);
  EXPECT_EQ(expected.diffusers_shapes().size(), 194u) << "diffusers names must be unique";
  std::int64_t parameters = 0;
  for (const NamedTensor& t : expected.tensors())
    parameters += shape_numel(t.shape);
  EXPECT_EQ(parameters, 126892531);
  const auto shapes = expected.diffusers_shapes();
  EXPECT_EQ(shapes.at("decoder.up_blocks.1.resnets.0.conv1.weight"), (Shape{384, 192, 3, 3, 3}));
  EXPECT_EQ(shapes.at("decoder.up_blocks.1.resnets.0.conv_shortcut.weight"),
            (Shape{384, 192, 1, 1, 1}));
  EXPECT_EQ(shapes.at("decoder.up_blocks.0.upsamplers.0.time_conv.weight"),
            (Shape{768, 384, 3, 1, 1}));
  EXPECT_EQ(shapes.at("decoder.up_blocks.2.upsamplers.0.resample.1.weight"),
            (Shape{96, 192, 3, 3}));
  EXPECT_EQ(shapes.count("decoder.up_blocks.2.upsamplers.0.time_conv.weight"), 0u);
}

TEST(VaeTensorNames, WanNamesMapOneToOne) {
  const QwenImageVaeConfig config = QwenImageVaeConfig::qwen_image();
  const ExpectedTensors expected(config);
  const TensorNameMap map = vae_tensor_name_map(VaeTensorFormat::wan, config);
  std::set<std::string> mapped;
  std::set<std::string> expected_names;
  for (const NamedTensor& t : expected.tensors()) {
    const std::optional<std::string> canonical = map(t.wan);
    ASSERT_TRUE(canonical.has_value()) << t.wan;
    EXPECT_EQ(*canonical, t.diffusers) << "Wan name " << t.wan;
    mapped.insert(*canonical);
    expected_names.insert(t.diffusers);
  }
  EXPECT_EQ(mapped.size(), 194u);
  EXPECT_EQ(mapped, expected_names);
}

TEST(VaeTensorNames, WanMappingFollowsResidualBlockCount) {
  // One residual block per encoder stage: decoder stages hold 2 resnets and an upsampler.
  const TensorNameMap map = wan_vae_tensor_name_map(1);
  EXPECT_EQ(map("decoder.upsamples.2.resample.1.weight"),
            "decoder.up_blocks.0.upsamplers.0.resample.1.weight");
  EXPECT_EQ(map("decoder.upsamples.3.residual.0.gamma"),
            "decoder.up_blocks.1.resnets.0.norm1.gamma");
  EXPECT_EQ(map("decoder.upsamples.7.shortcut.bias"),
            "decoder.up_blocks.2.resnets.1.conv_shortcut.bias");
  for (const QwenImageVaeConfig& config :
       {QwenImageVaeConfig::from_file(tiny_vae_dir() / "config.json")}) {
    const ExpectedTensors expected(config);
    const TensorNameMap tiny_map = vae_tensor_name_map(VaeTensorFormat::wan, config);
    for (const NamedTensor& t : expected.tensors()) {
      EXPECT_EQ(tiny_map(t.wan), t.diffusers);
    }
  }
}

TEST(VaeTensorNames, UnknownNamesPassThroughAndFormatIsDetected) {
  const TensorNameMap map = wan_vae_tensor_name_map(2);
  EXPECT_EQ(map("encoder.downsamples.0.residual.1.weight"),
            "encoder.downsamples.0.residual.1.weight");
  EXPECT_EQ(map("encoder.middle.3.residual.0.gamma"), "encoder.middle.3.residual.0.gamma");
  EXPECT_EQ(map("model.extra"), "model.extra");
  EXPECT_EQ(detect_vae_tensor_format({"conv1.weight", "encoder.conv1.weight"}),
            VaeTensorFormat::wan);
  EXPECT_EQ(detect_vae_tensor_format({"quant_conv.weight", "encoder.conv_in.weight"}),
            VaeTensorFormat::diffusers);
}

// Records what the model builder requests, handing out allocator tensors without data (the
// test runs it under a dry-run allocator).
class RecordingWeights final : public VaeWeightSource {
 public:
  Tensor take(const std::string& name, const Shape& shape, DType dtype) override {
    EXPECT_TRUE(requested.emplace(name, shape).second) << name << " requested twice";
    return Tensor::empty(shape, dtype);
  }
  void skip(const std::string& name, const Shape& shape) override {
    EXPECT_TRUE(requested.emplace(name, shape).second) << name << " requested twice";
    skipped.insert(name);
  }

  std::map<std::string, Shape> requested;
  std::set<std::string> skipped;
};

TEST(VaeModel, BuilderRequestsEveryRealTensorOnce) {
  const QwenImageVaeConfig config = QwenImageVaeConfig::qwen_image();
  CpuCachingAllocator dry_allocator(CpuCachingAllocator::Options{.dry_run = true});
  ScopedAllocator scope(dry_allocator);
  RecordingWeights weights;
  const QwenImageVae vae(config, weights, ModelPrecision::bf16());
  EXPECT_EQ(weights.requested, ExpectedTensors(config).diffusers_shapes());
  // The four 3-D resamplers' time_conv weight and bias are checked, never loaded.
  EXPECT_EQ(weights.skipped.size(), 8u);
  for (const std::string& name : weights.skipped) {
    EXPECT_NE(name.find(".time_conv."), std::string::npos) << name;
  }
}

TEST(VaeModel, RandomWeightsDependOnSeedAndName) {
  RandomVaeWeights first(7);
  RandomVaeWeights second(7);
  RandomVaeWeights other_seed(8);
  const Shape shape = {48, 24, 3, 3, 3};
  const std::vector<float> a = first.take("decoder.conv_in.weight", shape, DType::f32).to_floats();
  EXPECT_EQ(a, second.take("decoder.conv_in.weight", shape, DType::f32).to_floats());
  EXPECT_NE(a, other_seed.take("decoder.conv_in.weight", shape, DType::f32).to_floats());
  EXPECT_NE(a, first.take("encoder.conv_in.weight", shape, DType::f32).to_floats());
  // Uniform with variance 1 / fan_in: |w| <= sqrt(3 / 648) and a sample variance near 1/648.
  double sum_of_squares = 0.0;
  for (float w : a) {
    EXPECT_LE(std::fabs(w), std::sqrt(3.0f / 648.0f));
    sum_of_squares += static_cast<double>(w) * w;
  }
  EXPECT_NEAR(sum_of_squares / static_cast<double>(a.size()), 1.0 / 648.0, 0.1 / 648.0);
  for (float g : first.take("decoder.norm_out.gamma", {96, 1, 1, 1}, DType::bf16).to_floats()) {
    EXPECT_GE(g, 0.89f);
    EXPECT_LE(g, 1.11f);
  }
  for (float b : first.take("decoder.conv_out.bias", {3}, DType::f32).to_floats()) {
    EXPECT_LE(std::fabs(b), 0.05f);
  }
}

// ---------------------------------------------------------------------------------------
// Parity with the PyTorch reference vectors (tests/data/models/vae/*.safetensors, made by
// tools/reference/make_test_vectors.py from the committed tiny weights).

class VaeParityTest : public ::testing::Test {
 protected:
  static QwenImageVae load_tiny(ModelPrecision precision, VaeParts parts = {}) {
    return QwenImageVae::load_directory(tiny_vae_dir(), precision, parts);
  }
  static SafetensorsCheckpoint open_case(const std::string& name) {
    return SafetensorsCheckpoint::open(vae_test::models_data_dir() / "vae" / name);
  }
};

TEST_F(VaeParityTest, EncodeMatchesReferenceInF32) {
  const SafetensorsCheckpoint file = open_case("encode.safetensors");
  const QwenImageVae vae = load_tiny(ModelPrecision::f32());
  const Tensor image = load_frame(file, "input.image");  // [1, 3, 40, 56]
  const Tensor mean = vae.encode(image);
  EXPECT_EQ(mean.shape(), (Shape{1, 16, 5, 7}));
  EXPECT_EQ(mean.dtype(), DType::f32);
  // f32 against the f32 reference (measured max difference 8e-7; the reference itself differs
  // from float64 by under 3e-6).
  expect_close(mean, load_frame(file, "output.mean"), 1e-4, 1e-4, "encode mean");
  expect_close(vae.normalize_latents(mean), load_frame(file, "normalize.latents"), 1e-4, 1e-4,
               "normalized latents");
}

TEST_F(VaeParityTest, DecodeMatchesReferenceInF32) {
  const SafetensorsCheckpoint file = open_case("decode.safetensors");
  const QwenImageVae vae = load_tiny(ModelPrecision::f32());
  const Tensor latents = load_frame(file, "input.latents");  // [1, 16, 5, 3]
  expect_close(vae.denormalize_latents(load_frame(file, "denormalize.normalized_latents")), latents,
               1e-5, 1e-5, "denormalized latents");
  const Tensor image = vae.decode(latents);
  EXPECT_EQ(image.shape(), (Shape{1, 3, 40, 24}));
  expect_close(image, load_frame(file, "output.image"), 1e-4, 1e-4, "decoded image");
  const std::vector<float> values = image.to_floats();
  EXPECT_LE(*std::max_element(values.begin(), values.end()), 1.0f);
  EXPECT_GE(*std::min_element(values.begin(), values.end()), -1.0f);
}

// bf16 weights and activations (the real-run precision): every convolution rounds its input
// and output to bf16, so errors accumulate over the ~40 layers. Measured: encode mean max 0.016
// against a largest |mean| of 1.17; decoded pixels max 0.043, mean 0.0037. Bounds: mean
// within 5% of the largest reference value; pixels within 0.1 (5% of the [-1, 1] range) at
// worst and 0.01 on average.
TEST_F(VaeParityTest, Bf16StaysNearReference) {
  const QwenImageVae vae = load_tiny(ModelPrecision::bf16());
  {
    const SafetensorsCheckpoint file = open_case("encode.safetensors");
    const Tensor mean = vae.encode(load_frame(file, "input.image"));
    EXPECT_EQ(mean.dtype(), DType::bf16);
    const vae_test::Difference d = vae_test::difference(mean, load_frame(file, "output.mean"));
    EXPECT_LE(d.max_abs, 0.05 * d.max_ref) << "max reference " << d.max_ref;
  }
  {
    const SafetensorsCheckpoint file = open_case("decode.safetensors");
    const Tensor image = vae.decode(load_frame(file, "input.latents"));
    const vae_test::Difference d = vae_test::difference(image, load_frame(file, "output.image"));
    EXPECT_LE(d.max_abs, 0.1);
    EXPECT_LE(d.mean_abs, 0.01);
  }
}

TEST_F(VaeParityTest, WanNamedCheckpointLoadsTheSameModel) {
  const TemporaryDirectory directory("vae_wan");
  const fs::path wan_file = directory / "qwen_image_vae.safetensors";
  const QwenImageVaeConfig config = QwenImageVaeConfig::from_file(tiny_vae_dir() / "config.json");
  {
    const SafetensorsCheckpoint diffusers = SafetensorsCheckpoint::open(tiny_vae_dir());
    std::vector<std::pair<std::string, Tensor>> renamed;
    const ExpectedTensors expected(config);
    for (const NamedTensor& t : expected.tensors()) {
      renamed.emplace_back(t.wan, diffusers.tensor(t.diffusers));
    }
    write_safetensors(wan_file, renamed);
  }
  const SafetensorsCheckpoint wan = SafetensorsCheckpoint::open(wan_file);
  const QwenImageVae from_wan = QwenImageVae::load(wan, config, ModelPrecision::f32());
  const QwenImageVae from_diffusers = load_tiny(ModelPrecision::f32());
  const SafetensorsCheckpoint file = open_case("encode.safetensors");
  const Tensor image = load_frame(file, "input.image");
  EXPECT_EQ(from_wan.encode(image).to_floats(), from_diffusers.encode(image).to_floats());
  const Tensor latents = Tensor::zeros({1, 16, 2, 3}, DType::f32);
  EXPECT_EQ(from_wan.decode(latents).to_floats(), from_diffusers.decode(latents).to_floats());
}

TEST_F(VaeParityTest, DecoderOnlyModelLoadsAndDecodes) {
  const QwenImageVae full = load_tiny(ModelPrecision::f32());
  const QwenImageVae decoder_only = load_tiny(ModelPrecision::f32(), {.encoder = false});
  EXPECT_FALSE(decoder_only.has_encoder());
  EXPECT_TRUE(decoder_only.has_decoder());
  const SafetensorsCheckpoint file = open_case("decode.safetensors");
  const Tensor latents = load_frame(file, "input.latents");
  EXPECT_EQ(decoder_only.decode(latents).to_floats(), full.decode(latents).to_floats());
  const std::string message = error_message<Error>([&] {
    decoder_only.encode(Tensor::zeros({1, 3, 8, 8}, DType::f32));
  });
  EXPECT_NE(message.find("encoder was not loaded"), std::string::npos) << message;
}

TEST_F(VaeParityTest, RejectsInvalidInputs) {
  const QwenImageVae vae = load_tiny(ModelPrecision::f32());
  std::string message = error_message<Error>([&] {
    vae.encode(Tensor::zeros({1, 3, 40, 52}, DType::f32));
  });
  EXPECT_NE(message.find("multiples of 8"), std::string::npos) << message;
  EXPECT_NE(message.find("f32[1, 3, 40, 52]"), std::string::npos) << message;
  message = error_message<Error>([&] { vae.encode(Tensor::zeros({1, 4, 8, 8}, DType::f32)); });
  EXPECT_NE(message.find("[1, 3, H, W]"), std::string::npos) << message;
  message = error_message<Error>([&] { vae.decode(Tensor::zeros({1, 16, 1, 2, 3}, DType::f32)); });
  EXPECT_NE(message.find("[1, 16, H, W]"), std::string::npos) << message;
  message = error_message<Error>([&] { vae.decode(Tensor::zeros({2, 16, 2, 3}, DType::f32)); });
  EXPECT_NE(message.find("f32[2, 16, 2, 3]"), std::string::npos) << message;
  EXPECT_THROW(vae.normalize_latents(Tensor::zeros({1, 4, 2, 2}, DType::f32)), InvalidInputError);
}

TEST_F(VaeParityTest, RejectsCheckpointOfAnotherConfig) {
  QwenImageVaeConfig config = QwenImageVaeConfig::from_file(tiny_vae_dir() / "config.json");
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(tiny_vae_dir());
  config.base_dim = 8;
  const std::string wrong_shape =
      error_message<Error>([&] { QwenImageVae::load(checkpoint, config, ModelPrecision::f32()); });
  EXPECT_NE(wrong_shape.find("\"encoder.conv_in.weight\" has shape [4, 3, 3, 3, 3]"),
            std::string::npos)
      << wrong_shape;
  config.base_dim = 4;
  config.num_res_blocks = 1;  // down_blocks.1 is then a resampler
  const std::string missing =
      error_message<Error>([&] { QwenImageVae::load(checkpoint, config, ModelPrecision::f32()); });
  EXPECT_NE(missing.find("\"encoder.down_blocks.1.resample.1.weight\" is missing"),
            std::string::npos)
      << missing;
}

TEST_F(VaeParityTest, RejectsUnexpectedTensor) {
  const TemporaryDirectory directory("vae_extra");
  const fs::path file = directory / "vae.safetensors";
  {
    const SafetensorsCheckpoint tiny = SafetensorsCheckpoint::open(tiny_vae_dir());
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const std::string& name : tiny.names()) {
      tensors.emplace_back(name, tiny.tensor(name));
    }
    tensors.emplace_back("decoder.extra_head.weight", Tensor::zeros({2}, DType::f32));
    write_safetensors(file, tensors);
  }
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(file);
  const QwenImageVaeConfig config = QwenImageVaeConfig::from_file(tiny_vae_dir() / "config.json");
  const std::string message =
      error_message<Error>([&] { QwenImageVae::load(checkpoint, config, ModelPrecision::f32()); });
  EXPECT_NE(message.find("do not belong"), std::string::npos) << message;
  EXPECT_NE(message.find("decoder.extra_head.weight"), std::string::npos) << message;
}

// ---------------------------------------------------------------------------------------
// Dry run: the planner's allocator statistics must equal a real run's.

AllocatorStats run_load_encode_decode(bool dry, const VaeMemoryOptions& options) {
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(tiny_vae_dir());
  const QwenImageVaeConfig config = QwenImageVaeConfig::from_file(tiny_vae_dir() / "config.json");
  const Tensor image = Tensor::zeros({1, 3, 48, 40}, DType::f32);
  const Tensor latents = Tensor::zeros({1, 16, 6, 5}, DType::f32);
  CpuCachingAllocator allocator(CpuCachingAllocator::Options{.dry_run = dry});
  {
    ScopedAllocator scope(allocator);
    const QwenImageVae vae = QwenImageVae::load(checkpoint, config, ModelPrecision::bf16());
    Tensor mean = vae.encode(image, options);
    const Tensor normalized = vae.normalize_latents(mean);
    mean = Tensor();
    const Tensor decoded = vae.decode(vae.denormalize_latents(normalized), options);
    EXPECT_EQ(decoded.shape(), (Shape{1, 3, 48, 40}));
    EXPECT_EQ(decoded.is_dry(), dry);
  }
  return allocator.stats();
}

void expect_same_stats(const AllocatorStats& dry, const AllocatorStats& real) {
  EXPECT_GT(real.allocation_count, 0);
  EXPECT_EQ(dry.allocation_count, real.allocation_count);
  EXPECT_EQ(dry.cache_hits, real.cache_hits);
  EXPECT_EQ(dry.allocated_bytes.peak, real.allocated_bytes.peak);
  EXPECT_EQ(dry.allocated_bytes.current, real.allocated_bytes.current);
  EXPECT_EQ(dry.reserved_bytes.peak, real.reserved_bytes.peak);
  EXPECT_EQ(dry.requested_bytes.peak, real.requested_bytes.peak);
}

TEST(VaeDryRun, AllocatesLikeRealRun) {
  expect_same_stats(run_load_encode_decode(true, {}), run_load_encode_decode(false, {}));
}

TEST(VaeDryRun, TiledRunAllocatesLikeRealRun) {
  VaeMemoryOptions options;
  options.tiling = {.enabled = true, .tile_px = 24, .overlap_px = 8};
  options.attention_query_tile = 4;
  expect_same_stats(run_load_encode_decode(true, options), run_load_encode_decode(false, options));
}

}  // namespace
}  // namespace ethereal
