// Reading LoRA files: key layouts, canonical module names, malformed files, check() against a
// model, command-line arguments and Lightning step counts from file names.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "lora/lora_test_support.h"
#include "models/lora/lora.h"
#include "runtime/allocator.h"
#include "support/errors.h"
#include "support/files.h"
#include "support/inputs.h"

namespace ethereal {
namespace {

using lora_testing::all_layouts;
using lora_testing::KeyLayout;
using lora_testing::ModuleFactors;
using lora_testing::random_module;
using lora_testing::write_lora;
using test_support::error_message;
using test_support::TemporaryDirectory;
using test_support::uniform_tensor;
using test_support::uniform_values;

const KeyLayout kLightning = all_layouts().front();

// Two modules of a tiny transformer with rank 3: to_q [6, 5] and img_mlp.net.2 [5, 7].
std::vector<ModuleFactors> two_modules(DType dtype, float alpha = 2.0f) {
  return {random_module("transformer_blocks.1.img_mlp.net.2", 5, 7, 3, 10, alpha, dtype),
          random_module("transformer_blocks.0.attn.to_q", 6, 5, 3, 20, alpha, dtype)};
}

TEST(LoraRead, EveryLayoutGivesCanonicalNames) {
  TemporaryDirectory directory;
  for (const KeyLayout& layout : all_layouts()) {
    for (DType dtype : {DType::f32, DType::bf16}) {
      SCOPED_TRACE(layout.name + " " + std::string(dtype_name(dtype)));
      const auto path = directory / "lora.safetensors";
      const std::vector<ModuleFactors> written = two_modules(dtype);
      write_lora(path, layout, written);

      const LoraSet set = LoraSet::read({{path, 0.75f}});

      EXPECT_EQ(set.modules(), (std::vector<std::string>{"transformer_blocks.0.attn.to_q",
                                                         "transformer_blocks.1.img_mlp.net.2"}));
      for (const ModuleFactors& factors : written) {
        const std::vector<LoraLayer>* layers = set.find(factors.module);
        ASSERT_NE(layers, nullptr);
        ASSERT_EQ(layers->size(), 1u);
        const LoraLayer& layer = layers->front();
        EXPECT_EQ(layer.down.dtype(), DType::f32);
        EXPECT_EQ(layer.up.dtype(), DType::f32);
        EXPECT_EQ(layer.down.shape(), factors.down.shape());
        EXPECT_EQ(layer.up.shape(), factors.up.shape());
        // bf16 to f32 is exact, so the factors read back bit for bit.
        EXPECT_EQ(layer.down.to_floats(), factors.down.to_floats());
        EXPECT_EQ(layer.up.to_floats(), factors.up.to_floats());
        EXPECT_EQ(layer.alpha, layout.has_alpha ? 2.0f : 3.0f);
        EXPECT_EQ(layer.strength, 0.75f);
        EXPECT_EQ(layer.file, path);
      }
    }
  }
}

TEST(LoraRead, LightningScaleIsAlphaOverRank) {
  TemporaryDirectory directory;
  const auto path = directory / "lightning.safetensors";
  write_lora(path, kLightning,
             {random_module("transformer_blocks.0.attn.to_k", 4, 4, 64, 1, 8.0f, DType::bf16)});

  const LoraSet set = LoraSet::read({{path, 1.0f}});

  const LoraLayer& layer = set.find("transformer_blocks.0.attn.to_k")->front();
  EXPECT_EQ(layer.rank(), 64);
  EXPECT_FLOAT_EQ(layer.scale(), 0.125f);
  EXPECT_EQ(set.find("transformer_blocks.0.attn.to_v"), nullptr);
}

TEST(LoraRead, AlphaOfShapeOneAndBf16IsAccepted) {
  TemporaryDirectory directory;
  const auto path = directory / "lora.safetensors";
  const float alpha[] = {4.0f};
  write_safetensors(path, {{"x.lora_down.weight", uniform_tensor({2, 3}, DType::f32, 1)},
                           {"x.lora_up.weight", uniform_tensor({3, 2}, DType::f32, 2)},
                           {"x.alpha", Tensor::from_floats(alpha, {1}, DType::bf16)}});

  const LoraSet set = LoraSet::read({{path, 0.5f}});

  EXPECT_FLOAT_EQ(set.find("x")->front().scale(), 0.5f * 4.0f / 2.0f);
}

TEST(LoraRead, FactorsComeFromCurrentAllocator) {
  TemporaryDirectory directory;
  const auto path = directory / "lora.safetensors";
  write_lora(path, kLightning, two_modules(DType::bf16));
  CpuCachingAllocator allocator;
  ScopedAllocator scope(allocator);

  const LoraSet set = LoraSet::read({{path, 1.0f}});

  // f32 copies: 3 * (5 + 7) + 3 * (6 + 5) elements of 4 bytes.
  EXPECT_EQ(set.nbytes(), std::size_t{4 * 3 * (5 + 7 + 6 + 5)});
  EXPECT_GE(allocator.stats().requested_bytes.current, static_cast<std::int64_t>(set.nbytes()));
}

TEST(LoraRead, TwoFilesGiveOneLayerEach) {
  TemporaryDirectory directory;
  const auto first = directory / "first.safetensors";
  const auto second = directory / "second.safetensors";
  write_lora(first, kLightning, two_modules(DType::f32));
  write_lora(second, all_layouts()[5],
             {random_module("transformer_blocks.0.attn.to_q", 6, 5, 2, 30, 0.0f)});

  const LoraSet set = LoraSet::read({{first, 1.0f}, {second, -0.5f}});

  const std::vector<LoraLayer>* to_q = set.find("transformer_blocks.0.attn.to_q");
  ASSERT_NE(to_q, nullptr);
  ASSERT_EQ(to_q->size(), 2u);
  EXPECT_EQ((*to_q)[0].file, first);
  EXPECT_EQ((*to_q)[1].file, second);
  EXPECT_EQ((*to_q)[1].rank(), 2);
  EXPECT_EQ((*to_q)[1].strength, -0.5f);
  EXPECT_EQ(set.find("transformer_blocks.1.img_mlp.net.2")->size(), 1u);
}

TEST(LoraRead, EmptyListGivesEmptySet) {
  const LoraSet set = LoraSet::read({});
  EXPECT_TRUE(set.empty());
  EXPECT_TRUE(set.modules().empty());
}

// Writes `tensors` and returns the message of reading the file, which must name the file.
std::string read_error(const TemporaryDirectory& directory,
                       const std::vector<std::pair<std::string, Tensor>>& tensors) {
  const auto path = directory / "bad.safetensors";
  write_safetensors(path, tensors);
  const std::string message = error_message([&] { LoraSet::read({{path, 1.0f}}); });
  EXPECT_NE(message.find(path.string()), std::string::npos) << message;
  return message;
}

TEST(LoraRead, MissingUpPartnerNamesKey) {
  TemporaryDirectory directory;
  const float alpha[] = {1.0f};
  const std::string message =
      read_error(directory, {{"a.lora_down.weight", uniform_tensor({2, 3}, DType::f32, 1)},
                             {"a.lora_up.weight", uniform_tensor({3, 2}, DType::f32, 2)},
                             {"b.lora_down.weight", uniform_tensor({2, 3}, DType::f32, 3)},
                             {"b.alpha", Tensor::from_floats(alpha, {})}});
  EXPECT_NE(message.find("\"b.lora_down.weight\""), std::string::npos) << message;
  EXPECT_NE(message.find("no up"), std::string::npos) << message;
}

TEST(LoraRead, MissingDownPartnerNamesKey) {
  TemporaryDirectory directory;
  const std::string message = read_error(
      directory, {{"transformer.a.lora_B.weight", uniform_tensor({3, 2}, DType::f32, 1)}});
  EXPECT_NE(message.find("\"transformer.a.lora_B.weight\""), std::string::npos) << message;
  EXPECT_NE(message.find("no down"), std::string::npos) << message;
}

TEST(LoraRead, AlphaWithoutFactorsIsRejected) {
  TemporaryDirectory directory;
  const float alpha[] = {1.0f};
  const std::string message = read_error(directory, {{"a.alpha", Tensor::from_floats(alpha, {})}});
  EXPECT_NE(message.find("\"a.alpha\""), std::string::npos) << message;
}

TEST(LoraRead, UnknownKeyKindNamesKey) {
  TemporaryDirectory directory;
  for (const std::string key : {"a.lora_mid.weight", "a.diff", "a.dora_scale", "a.weight"}) {
    SCOPED_TRACE(key);
    const std::string message =
        read_error(directory, {{"a.lora_down.weight", uniform_tensor({2, 3}, DType::f32, 1)},
                               {"a.lora_up.weight", uniform_tensor({3, 2}, DType::f32, 2)},
                               {key, uniform_tensor({3, 3}, DType::f32, 3)}});
    EXPECT_NE(message.find("\"" + key + "\""), std::string::npos) << message;
    EXPECT_NE(message.find("unsupported kind"), std::string::npos) << message;
  }
}

TEST(LoraRead, KohyaNamesAreRejected) {
  TemporaryDirectory directory;
  const std::string message =
      read_error(directory, {{"lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight",
                              uniform_tensor({2, 3}, DType::f32, 1)},
                             {"lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight",
                              uniform_tensor({3, 2}, DType::f32, 2)}});
  EXPECT_NE(message.find("kohya"), std::string::npos) << message;
  EXPECT_NE(message.find("lora_unet_transformer_blocks_0_attn_to_q.lora_"), std::string::npos)
      << message;
}

TEST(LoraRead, RankMismatchNamesBothKeys) {
  TemporaryDirectory directory;
  const std::string message =
      read_error(directory, {{"a.lora_down.weight", uniform_tensor({4, 3}, DType::f32, 1)},
                             {"a.lora_up.weight", uniform_tensor({3, 2}, DType::f32, 2)}});
  EXPECT_NE(message.find("\"a.lora_down.weight\" [4, 3] has rank 4"), std::string::npos) << message;
  EXPECT_NE(message.find("\"a.lora_up.weight\" [3, 2] has rank 2"), std::string::npos) << message;
}

TEST(LoraRead, NonFiniteValueNamesKey) {
  TemporaryDirectory directory;
  std::vector<float> values = uniform_values(6, 1);
  values[4] = std::numeric_limits<float>::infinity();
  const std::string message = read_error(
      directory, {{"a.lora_down.weight", uniform_tensor({2, 3}, DType::f32, 1)},
                  {"a.lora_up.weight", Tensor::from_floats(values, {3, 2}, DType::bf16)}});
  EXPECT_NE(message.find("\"a.lora_up.weight\""), std::string::npos) << message;
  EXPECT_NE(message.find("non-finite"), std::string::npos) << message;
  EXPECT_NE(message.find("element 4"), std::string::npos) << message;
}

TEST(LoraRead, NonFiniteAlphaNamesKey) {
  TemporaryDirectory directory;
  const float alpha[] = {std::numeric_limits<float>::quiet_NaN()};
  const std::string message =
      read_error(directory, {{"a.lora_down.weight", uniform_tensor({2, 3}, DType::f32, 1)},
                             {"a.lora_up.weight", uniform_tensor({3, 2}, DType::f32, 2)},
                             {"a.alpha", Tensor::from_floats(alpha, {})}});
  EXPECT_NE(message.find("\"a.alpha\""), std::string::npos) << message;
}

TEST(LoraRead, AlphaWithSeveralValuesIsRejected) {
  TemporaryDirectory directory;
  const std::string message =
      read_error(directory, {{"a.lora_down.weight", uniform_tensor({2, 3}, DType::f32, 1)},
                             {"a.lora_up.weight", uniform_tensor({3, 2}, DType::f32, 2)},
                             {"a.alpha", uniform_tensor({2}, DType::f32, 3)}});
  EXPECT_NE(message.find("\"a.alpha\""), std::string::npos) << message;
  EXPECT_NE(message.find("single number"), std::string::npos) << message;
}

TEST(LoraRead, ModuleStoredTwiceNamesBothKeys) {
  TemporaryDirectory directory;
  const std::string message = read_error(
      directory, {{"transformer.a.lora_down.weight", uniform_tensor({2, 3}, DType::f32, 1)},
                  {"a.lora_down.weight", uniform_tensor({2, 3}, DType::f32, 2)},
                  {"a.lora_up.weight", uniform_tensor({3, 2}, DType::f32, 3)}});
  EXPECT_NE(message.find("\"transformer.a.lora_down.weight\""), std::string::npos) << message;
  EXPECT_NE(message.find("\"a.lora_down.weight\""), std::string::npos) << message;
}

TEST(LoraRead, FactorThatIsNotMatrixNamesKey) {
  TemporaryDirectory directory;
  const std::string message =
      read_error(directory, {{"a.lora_down.weight", uniform_tensor({2, 3, 1, 1}, DType::f32, 1)},
                             {"a.lora_up.weight", uniform_tensor({3, 2}, DType::f32, 2)}});
  EXPECT_NE(message.find("\"a.lora_down.weight\" has shape [2, 3, 1, 1]"), std::string::npos)
      << message;
}

TEST(LoraRead, IntegerFactorNamesKey) {
  TemporaryDirectory directory;
  const std::string message = read_error(
      directory, {{"a.lora_down.weight", uniform_tensor({2, 3}, DType::f32, 1).to(DType::int32)},
                  {"a.lora_up.weight", uniform_tensor({3, 2}, DType::f32, 2)}});
  EXPECT_NE(message.find("\"a.lora_down.weight\" has dtype I32"), std::string::npos) << message;
}

TEST(LoraRead, FileWithoutLoraKeysIsRejected) {
  TemporaryDirectory directory;
  const std::string message = read_error(directory, {});
  EXPECT_NE(message.find("no LoRA tensors"), std::string::npos) << message;
}

TEST(LoraRead, MissingFileIsRejected) {
  TemporaryDirectory directory;
  EXPECT_THROW(LoraSet::read({{directory / "absent.safetensors", 1.0f}}), Error);
}

// A model with the two layers of two_modules(): to_q [6, 5] and img_mlp.net.2 [5, 7].
std::optional<std::pair<std::int64_t, std::int64_t>> tiny_model_shape(std::string_view module) {
  if (module == "transformer_blocks.0.attn.to_q") {
    return std::pair<std::int64_t, std::int64_t>{6, 5};
  }
  if (module == "transformer_blocks.1.img_mlp.net.2") {
    return std::pair<std::int64_t, std::int64_t>{5, 7};
  }
  return std::nullopt;
}

TEST(LoraCheck, MatchingModelPasses) {
  TemporaryDirectory directory;
  const auto path = directory / "lora.safetensors";
  write_lora(path, kLightning, two_modules(DType::f32));
  const LoraSet set = LoraSet::read({{path, 1.0f}});
  EXPECT_NO_THROW(set.check(tiny_model_shape));
}

TEST(LoraCheck, UnmatchedModulesAreCountedAndNamed) {
  TemporaryDirectory directory;
  const auto path = directory / "lora.safetensors";
  std::vector<ModuleFactors> modules = two_modules(DType::f32);
  for (int i = 0; i < 6; ++i) {
    modules.push_back(
        random_module("single_blocks." + std::to_string(i) + ".linear1", 4, 4, 2, 40 + i, 2.0f));
  }
  write_lora(path, kLightning, modules);
  const LoraSet set = LoraSet::read({{path, 1.0f}});

  const std::string message = error_message([&] { set.check(tiny_model_shape); });

  EXPECT_NE(message.find("6 of 8 LoRA modules match no linear layer"), std::string::npos)
      << message;
  for (int i = 0; i < 5; ++i) {
    EXPECT_NE(message.find("\"single_blocks." + std::to_string(i) + ".linear1\""),
              std::string::npos)
        << message;
  }
  EXPECT_EQ(message.find("single_blocks.5.linear1"), std::string::npos) << message;
  EXPECT_NE(message.find("and 1 more"), std::string::npos) << message;
}

TEST(LoraCheck, ShapeMismatchNamesModuleAndShapes) {
  TemporaryDirectory directory;
  const auto path = directory / "lora.safetensors";
  write_lora(path, kLightning, {random_module("transformer_blocks.0.attn.to_q", 6, 4, 3, 1, 2.0f)});
  const LoraSet set = LoraSet::read({{path, 1.0f}});

  const std::string message = error_message([&] { set.check(tiny_model_shape); });

  EXPECT_NE(message.find(path.string()), std::string::npos) << message;
  EXPECT_NE(message.find("\"transformer_blocks.0.attn.to_q\" changes a [6, 4] weight"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("the model's layer is [6, 5]"), std::string::npos) << message;
}

TEST(LoraCoverage, UnusedModulesShrinkAsMarked) {
  TemporaryDirectory directory;
  const auto path = directory / "lora.safetensors";
  write_lora(path, kLightning, two_modules(DType::f32));
  const LoraSet set = LoraSet::read({{path, 1.0f}});

  EXPECT_EQ(set.unused_modules(), set.modules());
  set.mark_applied("transformer_blocks.0.attn.to_q");
  EXPECT_EQ(set.unused_modules(), std::vector<std::string>{"transformer_blocks.1.img_mlp.net.2"});
  set.mark_applied("transformer_blocks.1.img_mlp.net.2");
  EXPECT_TRUE(set.unused_modules().empty());
}

TEST(LoraArgument, FileAloneHasStrengthOne) {
  const LoraFile file = parse_lora_argument("loras/lightning.safetensors");
  EXPECT_EQ(file.path, std::filesystem::path("loras/lightning.safetensors"));
  EXPECT_EQ(file.strength, 1.0f);
}

TEST(LoraArgument, ScaleAfterLastColon) {
  EXPECT_EQ(parse_lora_argument("a.safetensors:0.5").strength, 0.5f);
  EXPECT_EQ(parse_lora_argument("a.safetensors:-1.25").strength, -1.25f);
  EXPECT_EQ(parse_lora_argument("a.safetensors:2").strength, 2.0f);
  EXPECT_EQ(parse_lora_argument("a.safetensors:1e-1").strength, 0.1f);
  const LoraFile file = parse_lora_argument("dir:with:colons/a.safetensors:0.25");
  EXPECT_EQ(file.path, std::filesystem::path("dir:with:colons/a.safetensors"));
  EXPECT_EQ(file.strength, 0.25f);
}

TEST(LoraArgument, InvalidTextIsNamed) {
  for (const std::string text :
       {"", ":0.5", "a.safetensors:", "a.safetensors:abc", "a.safetensors:0.5x",
        "a.safetensors:nan", "a.safetensors:inf", "a.safetensors:1e400", "dir:x/a.safetensors"}) {
    SCOPED_TRACE(text);
    const std::string message = error_message([&] { parse_lora_argument(text); });
    EXPECT_NE(message.find("invalid LoRA argument \"" + text + "\""), std::string::npos) << message;
    EXPECT_NE(message.find("FILE:SCALE"), std::string::npos) << message;
  }
}

TEST(LightningSteps, FromFileNames) {
  const std::vector<std::pair<std::string, std::optional<int>>> cases = {
      {"Qwen-Image-Edit-2511-Lightning-4steps-V1.0-bf16.safetensors", 4},
      {"Qwen-Image-Edit-2511-Lightning-8steps-V1.0-fp32.safetensors", 8},
      {"/models/loras/qwen_lightning_4step.safetensors", 4},
      {"lightning-8-steps.safetensors", 8},
      {"LIGHTNING_4_STEP.safetensors", 4},
      {"Qwen-Image-Lightning-8Steps.safetensors", 8},
      {"style_lora.safetensors", std::nullopt},
      {"lightning-14steps.safetensors", std::nullopt},
      {"lightning-16steps.safetensors", std::nullopt},
      {"lightning-6steps.safetensors", std::nullopt},
      {"merged-4steps-8steps.safetensors", std::nullopt},
      {"steps.safetensors", std::nullopt},
      {"8steps/style.safetensors", std::nullopt},
  };
  for (const auto& [name, expected] : cases) {
    EXPECT_EQ(LoraSet::lightning_steps_from_name(name), expected) << name;
  }
}

}  // namespace
}  // namespace ethereal
