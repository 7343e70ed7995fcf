#include "quant/stored_weight.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "io/safetensors_writer.h"
#include "models/lora/lora.h"
#include "models/qwen_image/transformer_tensor_names.h"
#include "models/weight_loader.h"
#include "quant/quantize.h"
#include "quant_test_support.h"
#include "runtime/error.h"
#include "support/errors.h"
#include "support/files.h"

namespace ethereal::quant {
namespace {

namespace fs = std::filesystem;
using test_support::error_message;
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Values that fp8 e4m3 represents exactly, so a plain cast keeps them.
const std::vector<float> kFp8Exact = {1.0f, -0.5f, 0.25f, 2.0f,   -3.0f, 0.75f,
                                      1.5f, -1.0f, 0.0f,  0.125f, 4.0f,  -0.375f};
constexpr std::int64_t kOut = 3;
constexpr std::int64_t kIn = 4;

Tensor fp8_matrix() {
  return Tensor::from_floats(kFp8Exact, {kOut, kIn}, DType::fp8_e4m3);
}

Tensor f32_values(std::vector<float> values, const Shape& shape) {
  return Tensor::from_floats(values, shape, DType::f32);
}

// The uint8 bytes of `text`, as ComfyUI stores "<module>.comfy_quant".
Tensor json_bytes(const std::string& text) {
  Tensor bytes = Tensor::empty({static_cast<std::int64_t>(text.size())}, DType::uint8);
  std::memcpy(bytes.data(), text.data(), text.size());
  return bytes;
}

// Expected W[n, k] = kFp8Exact[n * in + k] * scale(n).
std::vector<float> scaled_expected(const std::function<float(std::int64_t)>& scale) {
  std::vector<float> expected(kFp8Exact.size());
  for (std::int64_t n = 0; n < kOut; ++n) {
    for (std::int64_t k = 0; k < kIn; ++k) {
      const auto i = static_cast<std::size_t>(n * kIn + k);
      expected[i] = kFp8Exact[i] * scale(n);
    }
  }
  return expected;
}

class StoredWeightTest : public ::testing::Test {
 protected:
  SafetensorsCheckpoint write(const NamedTensors& tensors,
                              const std::string& file = "w.safetensors") {
    const fs::path path = directory_ / file;
    write_safetensors(path, tensors);
    return SafetensorsCheckpoint::open(path);
  }

  // The dequantised weight of "<module>.weight" in f32.
  static std::vector<float> decoded(const SafetensorsCheckpoint& checkpoint,
                                    const std::string& weight_tensor) {
    const StoredWeight stored = inspect_stored_weight(checkpoint, weight_tensor);
    return decode_stored_weight(checkpoint, stored, DType::f32).to_floats();
  }

  test_support::TemporaryDirectory directory_{"stored_weight"};
};

TEST_F(StoredWeightTest, PlainFp8CastHasUnitScale) {
  const SafetensorsCheckpoint checkpoint = write({{"layer.weight", fp8_matrix()}});
  const StoredWeight stored = inspect_stored_weight(checkpoint, "layer.weight");
  EXPECT_EQ(stored.encoding, StoredEncoding::fp8_e4m3);
  EXPECT_EQ(stored.format(), QuantFormat::fp8_e4m3);
  EXPECT_EQ(stored.out_features, kOut);
  EXPECT_EQ(stored.in_features, kIn);
  EXPECT_TRUE(stored.scale_tensor.empty());
  EXPECT_TRUE(stored.auxiliary_tensors.empty());

  const QuantizedWeight weight = read_stored_weight(checkpoint, stored);
  EXPECT_EQ(weight.scales.shape(), Shape{1});
  EXPECT_EQ(weight.scales.to_floats(), std::vector<float>{1.0f});
  EXPECT_FALSE(weight.values.storage()->is_external()) << "read copies into allocator memory";
  EXPECT_EQ(dequantize(weight).to_floats(), kFp8Exact);
}

TEST_F(StoredWeightTest, ScaledFp8ScaleWeightScalarOrOneElement) {
  for (const Shape& scale_shape : {Shape{}, Shape{1}}) {
    const SafetensorsCheckpoint checkpoint =
        write({{"layer.weight", fp8_matrix()},
               {"layer.scale_weight", f32_values({0.5f}, scale_shape)},
               {"layer.scale_input", f32_values({2.0f}, {})},
               {"scaled_fp8", Tensor::empty({0}, DType::fp8_e4m3)}});
    const StoredWeight stored = inspect_stored_weight(checkpoint, "layer.weight");
    EXPECT_EQ(stored.scale_tensor, "layer.scale_weight");
    EXPECT_EQ(stored.scale_granularity, ScaleGranularity::per_tensor);
    EXPECT_EQ(stored.auxiliary_tensors,
              (std::vector<std::string>{"layer.scale_input", "layer.scale_weight"}));
    EXPECT_EQ(decoded(checkpoint, "layer.weight"),
              scaled_expected([](std::int64_t) { return 0.5f; }))
        << shape_str(scale_shape);
  }
}

TEST_F(StoredWeightTest, PerChannelWeightScale) {
  for (const Shape& scale_shape : {Shape{kOut}, Shape{kOut, 1}}) {
    const SafetensorsCheckpoint checkpoint =
        write({{"layer.weight", fp8_matrix()},
               {"layer.weight_scale", f32_values({0.5f, 2.0f, 0.25f}, scale_shape)}});
    const StoredWeight stored = inspect_stored_weight(checkpoint, "layer.weight");
    EXPECT_EQ(stored.scale_granularity, ScaleGranularity::per_channel);
    const QuantizedWeight weight = read_stored_weight(checkpoint, stored);
    EXPECT_EQ(weight.scales.shape(), Shape{kOut});
    const float scales[] = {0.5f, 2.0f, 0.25f};
    EXPECT_EQ(dequantize(weight).to_floats(),
              scaled_expected([&](std::int64_t n) { return scales[n]; }))
        << shape_str(scale_shape);
  }
}

TEST_F(StoredWeightTest, Bf16ScaleIsReadAsF32) {
  const SafetensorsCheckpoint checkpoint = write(
      {{"layer.weight", fp8_matrix()},
       {"layer.weight_scale", Tensor::from_floats(std::vector<float>{0.25f}, {}, DType::bf16)}});
  EXPECT_EQ(decoded(checkpoint, "layer.weight"),
            scaled_expected([](std::int64_t) { return 0.25f; }));
}

// A ComfyUI "fp8mixed" single file: prefixed names, comfy_quant JSON, weight_scale and
// input_scale on quantised layers, bf16 layers in between, and the 2511 marker.
TEST_F(StoredWeightTest, ComfyMixedFileLoadsThroughLoader) {
  const std::string p = std::string(kComfyDiffusionModelPrefix);
  const std::vector<float> bf16_values = {0.5f, 1.0f, -2.0f, 0.25f, 3.0f, -1.0f};
  const SafetensorsCheckpoint checkpoint = write({
      {p + "fp8_layer.weight", fp8_matrix()},
      {p + "fp8_layer.bias", f32_values({0.0f, 1.0f, 2.0f}, {kOut})},
      {p + "fp8_layer.weight_scale", f32_values({2.0f}, {})},
      {p + "fp8_layer.input_scale", f32_values({1.0f}, {})},
      {p + "fp8_layer.comfy_quant",
       json_bytes(R"({"format": "float8_e4m3fn", "full_precision_matrix_mult": true})")},
      {p + "bf16_layer.weight", Tensor::from_floats(bf16_values, {2, 3}, DType::bf16)},
      {p + "__index_timestep_zero__", Tensor::empty({0}, DType::bf16)},
  });
  const StoredWeight stored = inspect_stored_weight(checkpoint, p + "fp8_layer.weight");
  EXPECT_EQ(stored.encoding, StoredEncoding::fp8_e4m3);
  EXPECT_EQ(stored.auxiliary_tensors.size(), 3u);
  EXPECT_EQ(inspect_stored_weight(checkpoint, p + "bf16_layer.weight").encoding,
            StoredEncoding::float_weight);

  WeightLoader loader(checkpoint, comfy_transformer_tensor_name, "transformer");
  const LinearLayer fp8_layer = loader.linear("fp8_layer", kOut, kIn, true, DType::f32);
  const LinearLayer bf16_layer = loader.linear("bf16_layer", 2, 3, false, DType::f32);
  EXPECT_FALSE(fp8_layer.is_quantized()) << "without a quantisation policy, fp8 is decoded";
  EXPECT_EQ(fp8_layer.weight_format(), "f32");
  EXPECT_NO_THROW(loader.finish());

  // x = e_k picks column k of W (times 2) plus the bias.
  const Tensor x = f32_values({1.0f, 0.0f, 0.0f, 0.0f}, {1, kIn});
  EXPECT_EQ(fp8_layer.forward(x).to_floats(),
            (std::vector<float>{2.0f * 1.0f + 0.0f, 2.0f * -3.0f + 1.0f, 2.0f * 0.0f + 2.0f}));
  const Tensor y = bf16_layer.forward(f32_values({0.0f, 1.0f, 0.0f}, {1, 3}));
  EXPECT_EQ(y.to_floats(), (std::vector<float>{1.0f, 3.0f}));
}

TEST_F(StoredWeightTest, ScaledFp8MarkerPassesNameMap) {
  const SafetensorsCheckpoint checkpoint =
      write({{"layer.weight", fp8_matrix()},
             {"layer.scale_weight", f32_values({1.0f}, {})},
             {"scaled_fp8", Tensor::empty({0}, DType::fp8_e4m3)}});
  WeightLoader loader(checkpoint, comfy_transformer_tensor_name, "transformer");
  loader.linear("layer", kOut, kIn, false, DType::bf16);
  EXPECT_NO_THROW(loader.finish());
}

TEST_F(StoredWeightTest, FloatWeightWithScaleWeightIsScaled) {
  const std::vector<float> values = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f};
  const SafetensorsCheckpoint checkpoint =
      write({{"layer.weight", Tensor::from_floats(values, {2, 3}, DType::bf16)},
             {"layer.scale_weight", f32_values({0.5f}, {})}});
  const StoredWeight stored = inspect_stored_weight(checkpoint, "layer.weight");
  EXPECT_EQ(stored.encoding, StoredEncoding::float_weight);
  EXPECT_FALSE(stored.is_quantized());
  EXPECT_EQ(stored.scale_tensor, "layer.scale_weight");
  EXPECT_EQ(decoded(checkpoint, "layer.weight"),
            (std::vector<float>{0.5f, 1.0f, 1.5f, 2.0f, 2.5f, 3.0f}));

  WeightLoader loader(checkpoint, identity_tensor_name, "transformer");
  const LinearLayer layer = loader.linear("layer", 2, 3, false, DType::f32);
  EXPECT_EQ(layer.forward(f32_values({0.0f, 0.0f, 1.0f}, {1, 3})).to_floats(),
            (std::vector<float>{1.5f, 3.0f}));
  EXPECT_NO_THROW(loader.finish());
}

// The engine's own int8 and nf4 layouts read back to the bytes quantize() produced.
TEST_F(StoredWeightTest, Int8AndNf4LayoutsReadBack) {
  const std::int64_t out = 5;
  const std::int64_t in = 70;  // nf4: 350 values, 6 blocks, the last one short
  const Tensor source = Tensor::from_floats(
      testing::normal_values(static_cast<std::size_t>(out * in), 7), {out, in}, DType::bf16);
  const QuantizedWeight int8 = quantize_int8(source);
  const QuantizedWeight nf4 = quantize_nf4(source);
  Tensor nf4_bytes = Tensor::empty({out, in / 2}, DType::uint8);
  std::memcpy(nf4_bytes.data(), nf4.values.data(), nf4.values.nbytes());
  const SafetensorsCheckpoint checkpoint = write({
      {"a.weight", int8.values},
      {"a.weight_scale", int8.scales},
      {"b.weight", nf4_bytes},
      {"b.weight_absmax", nf4.nf4.absmax_codes},
      {"b.weight_absmax_scale", nf4.nf4.group_scales},
      {"b.weight_absmax_map", nf4.nf4.code_map},
      {"b.weight_absmax_offset", f32_values({nf4.nf4.offset}, {1})},
  });

  const StoredWeight stored_int8 = inspect_stored_weight(checkpoint, "a.weight");
  EXPECT_EQ(stored_int8.encoding, StoredEncoding::int8);
  EXPECT_EQ(dequantize(read_stored_weight(checkpoint, stored_int8)).to_floats(),
            dequantize(int8).to_floats());

  const StoredWeight stored_nf4 = inspect_stored_weight(checkpoint, "b.weight");
  EXPECT_EQ(stored_nf4.encoding, StoredEncoding::nf4);
  EXPECT_EQ(stored_nf4.in_features, in);
  EXPECT_EQ(stored_weight_shape(checkpoint, "b.weight"), (Shape{out, in}));
  EXPECT_EQ(stored_nf4.auxiliary_tensors.size(), 4u);
  for (const QuantizedWeight& read :
       {read_stored_weight(checkpoint, stored_nf4), map_stored_weight(checkpoint, stored_nf4)}) {
    EXPECT_EQ(read.values.dtype(), DType::packed4);
    EXPECT_EQ(std::memcmp(read.values.data(), nf4.values.data(), nf4.values.nbytes()), 0);
    EXPECT_EQ(read.nf4.offset, nf4.nf4.offset);
    EXPECT_EQ(dequantize(read).to_floats(), dequantize(nf4).to_floats());
  }
  EXPECT_TRUE(map_stored_weight(checkpoint, stored_nf4).values.storage()->is_external())
      << "map_stored_weight views the file";
}

TEST_F(StoredWeightTest, Int8PerTensorScaleIsRepeated) {
  const SafetensorsCheckpoint checkpoint =
      write({{"layer.weight",
              Tensor::from_floats(std::vector<float>{1, -2, 3, 4, 5, -6}, {2, 3}, DType::int8)},
             {"layer.scale_weight", f32_values({0.5f}, {1})}});
  const QuantizedWeight weight =
      read_stored_weight(checkpoint, inspect_stored_weight(checkpoint, "layer.weight"));
  EXPECT_EQ(weight.scales.to_floats(), (std::vector<float>{0.5f, 0.5f}));
  EXPECT_EQ(dequantize(weight).to_floats(),
            (std::vector<float>{0.5f, -1.0f, 1.5f, 2.0f, 2.5f, -3.0f}));
}

struct RejectedCase {
  std::string label;
  NamedTensors extra;        // tensors besides "layer.weight"
  Tensor weight;             // "layer.weight"
  std::string named_tensor;  // the tensor the message must name
  std::string message_part;  // and a phrase it must contain
};

TEST_F(StoredWeightTest, RejectsUnknownLayoutsNamingTensor) {
  const std::vector<RejectedCase> cases = {
      {"fp8 e5m2",
       {},
       Tensor::from_floats(kFp8Exact, {kOut, kIn}, DType::fp8_e5m2),
       "layer.weight",
       "e5m2"},
      {"comfy_quant nvfp4",
       {{"layer.comfy_quant", json_bytes(R"({"format": "nvfp4"})")}},
       fp8_matrix(),
       "layer.comfy_quant",
       "\"nvfp4\""},
      {"comfy_quant unknown key",
       {{"layer.comfy_quant", json_bytes(R"({"format": "float8_e4m3fn", "group_size": 128})")}},
       fp8_matrix(),
       "layer.comfy_quant",
       "group_size"},
      {"comfy_quant not JSON",
       {{"layer.comfy_quant", json_bytes("float8")}},
       fp8_matrix(),
       "layer.comfy_quant",
       "JSON"},
      {"unknown scale tensor",
       {{"layer.weight_scale_2", f32_values({1.0f}, {})}},
       fp8_matrix(),
       "layer.weight_scale_2",
       "not part of a weight layout"},
      {"bitsandbytes state",
       {{"layer.weight.absmax", f32_values({1.0f}, {1})}},
       fp8_matrix(),
       "layer.weight.absmax",
       "not part of a weight layout"},
      {"two scales",
       {{"layer.weight_scale", f32_values({1.0f}, {})},
        {"layer.scale_weight", f32_values({1.0f}, {})}},
       fp8_matrix(),
       "layer.weight_scale",
       "keep one"},
      {"scale of wrong shape",
       {{"layer.weight_scale", f32_values({1.0f, 2.0f}, {2})}},
       fp8_matrix(),
       "layer.weight_scale",
       "shape [2]"},
      {"integer scale",
       {{"layer.weight_scale", Tensor::from_floats(std::vector<float>{1.0f}, {}, DType::int32)}},
       fp8_matrix(),
       "layer.weight_scale",
       "dtype I32"},
      {"U8 without nf4 fields",
       {},
       Tensor::zeros({kOut, kIn / 2}, DType::uint8),
       "layer.weight",
       "nf4"},
      {"int8 without scale",
       {},
       Tensor::zeros({kOut, kIn}, DType::int8),
       "layer.weight",
       "weight_scale"},
      {"float weight with comfy_quant",
       {{"layer.comfy_quant", json_bytes(R"({"format": "float8_e4m3fn"})")}},
       Tensor::zeros({kOut, kIn}, DType::bf16),
       "layer.comfy_quant",
       "quantised layer"},
      {"int8 with fp8 comfy_quant",
       {{"layer.comfy_quant", json_bytes(R"({"format": "float8_e4m3fn"})")},
        {"layer.weight_scale", f32_values({1.0f}, {})}},
       Tensor::zeros({kOut, kIn}, DType::int8),
       "layer.weight",
       "float8_e4m3fn"},
  };
  for (const RejectedCase& c : cases) {
    NamedTensors tensors = c.extra;
    tensors.emplace_back("layer.weight", c.weight);
    const SafetensorsCheckpoint checkpoint = write(tensors, "rejected.safetensors");
    const std::string message =
        error_message([&] { inspect_stored_weight(checkpoint, "layer.weight"); });
    EXPECT_NE(message.find("rejected.safetensors"), std::string::npos)
        << c.label << ": " << message;
    EXPECT_NE(message.find("\"" + c.named_tensor + "\""), std::string::npos)
        << c.label << ": " << message;
    EXPECT_NE(message.find(c.message_part), std::string::npos) << c.label << ": " << message;

    // The loader reports the same error.
    WeightLoader loader(checkpoint, identity_tensor_name, "transformer");
    EXPECT_EQ(error_message([&] { loader.linear("layer", kOut, kIn, false, DType::bf16); }),
              message)
        << c.label;
  }
}

TEST_F(StoredWeightTest, DryRunAllocatesLikeRealRead) {
  const Tensor source = Tensor::from_floats(testing::normal_values(64 * 96, 3), {64, 96});
  const QuantizedWeight nf4 = quantize_nf4(source);
  Tensor nf4_bytes = Tensor::empty({64, 48}, DType::uint8);
  std::memcpy(nf4_bytes.data(), nf4.values.data(), nf4.values.nbytes());
  const SafetensorsCheckpoint checkpoint = write({
      {"fp8.weight", quantize_fp8_e4m3(source, ScaleGranularity::per_channel).values},
      {"fp8.weight_scale", Tensor::from_floats(testing::normal_values(64, 4), {64, 1})},
      {"nf4.weight", nf4_bytes},
      {"nf4.weight_absmax", nf4.nf4.absmax_codes},
      {"nf4.weight_absmax_scale", nf4.nf4.group_scales},
      {"nf4.weight_absmax_map", nf4.nf4.code_map},
      {"nf4.weight_absmax_offset", f32_values({nf4.nf4.offset}, {})},
  });
  for (const std::string name : {"fp8.weight", "nf4.weight"}) {
    const StoredWeight stored = inspect_stored_weight(checkpoint, name);
    const auto run = [&] {
      read_stored_weight(checkpoint, stored);
      decode_stored_weight(checkpoint, stored, DType::bf16);
    };
    testing::expect_same_statistics(testing::stats_of_run(false, run),
                                    testing::stats_of_run(true, run));
  }
}

// A layer that stays unquantised is decoded and gets a LoRA merged: W * 0.5 + up @ down.
TEST_F(StoredWeightTest, LoaderMergesLoraIntoDecodedWeight) {
  const SafetensorsCheckpoint checkpoint =
      write({{"layer.weight", fp8_matrix()}, {"layer.scale_weight", f32_values({0.5f}, {})}});
  const fs::path lora_path = directory_ / "lora.safetensors";
  write_safetensors(lora_path,
                    NamedTensors{{"layer.lora_down.weight", f32_values({1, 0, 0, 0}, {1, kIn})},
                                 {"layer.lora_up.weight", f32_values({1, 0, 0}, {kOut, 1})}});
  const LoraSet lora = LoraSet::read({LoraFile{lora_path, 1.0f}});
  WeightLoadOptions options;
  options.quant.format = QuantFormat::fp8_e4m3;  // not applied: "test" has no quantised layers
  options.lora = &lora;
  WeightLoader loader(checkpoint, identity_tensor_name, "test", options);
  const LinearLayer layer = loader.linear("layer", kOut, kIn, false, DType::f32);
  EXPECT_FALSE(layer.is_quantized());
  EXPECT_TRUE(layer.adapter().empty());
  // Column 0 of W * 0.5 is [0.5, -1.5, 0]; the update adds 1 at [0, 0].
  EXPECT_EQ(layer.forward(f32_values({1, 0, 0, 0}, {1, kIn})).to_floats(),
            (std::vector<float>{1.5f, -1.5f, 0.0f}));
  EXPECT_TRUE(lora.unused_modules().empty());
  EXPECT_NO_THROW(loader.finish());
}

// A layer stored in its target format is used as stored, with its own scales.
TEST_F(StoredWeightTest, LoaderUsesStoredFormat) {
  const SafetensorsCheckpoint checkpoint =
      write({{"transformer_blocks.0.x.weight", fp8_matrix()},
             {"transformer_blocks.0.x.scale_weight", f32_values({0.5f}, {})}});
  WeightLoadOptions options;
  options.quant.format = QuantFormat::fp8_e4m3;
  WeightLoader loader(checkpoint, identity_tensor_name, "transformer", options);
  const LinearLayer layer = loader.linear("transformer_blocks.0.x", kOut, kIn, false, DType::bf16);
  ASSERT_TRUE(layer.is_quantized());
  EXPECT_EQ(layer.quantized().weight().scales.to_floats(), std::vector<float>{0.5f})
      << "the stored per-tensor scale is kept (no re-quantisation)";
  EXPECT_EQ(std::memcmp(layer.quantized().weight().values.data(),
                        checkpoint.tensor("transformer_blocks.0.x.weight").data(), kOut * kIn),
            0);
  EXPECT_NO_THROW(loader.finish());
}

TEST_F(StoredWeightTest, LoaderAttachesLoraToStoredFp8) {
  const SafetensorsCheckpoint checkpoint =
      write({{"blk.weight", fp8_matrix()}, {"blk.scale_weight", f32_values({0.5f}, {})}});
  const fs::path lora_path = directory_ / "block_lora.safetensors";
  write_safetensors(
      lora_path,
      NamedTensors{{"transformer_blocks.0.x.lora_down.weight", f32_values({1, 0, 0, 0}, {1, kIn})},
                   {"transformer_blocks.0.x.lora_up.weight", f32_values({1, 0, 0}, {kOut, 1})}});
  const LoraSet lora = LoraSet::read({LoraFile{lora_path, 1.0f}});
  WeightLoadOptions options;
  options.quant.format = QuantFormat::fp8_e4m3;
  options.lora = &lora;
  options.lora_at_run_time = false;
  WeightLoader loader(
      checkpoint,
      [](std::string_view name) -> std::optional<std::string> {
        return "transformer_blocks.0.x" + std::string(name.substr(3));
      },
      "transformer", options);
  const LinearLayer layer = loader.linear("transformer_blocks.0.x", kOut, kIn, false, DType::bf16);
  ASSERT_TRUE(layer.is_quantized());
  EXPECT_FALSE(layer.adapter().empty()) << "a LoRA on a stored fp8 layer is never merged";
  EXPECT_EQ(std::memcmp(layer.quantized().weight().values.data(),
                        checkpoint.tensor("blk.weight").data(), kOut * kIn),
            0);
  EXPECT_TRUE(lora.unused_modules().empty());
  EXPECT_NO_THROW(loader.finish());
}

// Stored fp8 loaded as bf16 or as another quantised format: decoded, then packed or re-quantised.
TEST_F(StoredWeightTest, LoaderDecodesForOtherTargets) {
  const std::int64_t out = 64;
  const std::int64_t in = 128;
  const Tensor source = Tensor::from_floats(testing::normal_values(out * in, 11), {out, in});
  const QuantizedWeight fp8 = quantize_fp8_e4m3(source, ScaleGranularity::per_channel);
  const SafetensorsCheckpoint checkpoint =
      write({{"transformer_blocks.0.ff.weight", fp8.values},
             {"transformer_blocks.0.ff.weight_scale", fp8.scales}});
  const Tensor decoded_bf16 = dequantize(fp8, DType::bf16);

  WeightLoader bf16_loader(checkpoint, identity_tensor_name, "transformer");
  const LinearLayer packed =
      bf16_loader.linear("transformer_blocks.0.ff", out, in, false, DType::bf16);
  ASSERT_FALSE(packed.is_quantized());
  const cpu::PackedLinear expected(decoded_bf16, Tensor(), DType::bf16);
  ASSERT_EQ(packed.packed().packed_weight().nbytes(), expected.packed_weight().nbytes());
  EXPECT_EQ(std::memcmp(packed.packed().packed_weight().data(), expected.packed_weight().data(),
                        expected.packed_weight().nbytes()),
            0);
  EXPECT_NO_THROW(bf16_loader.finish());

  WeightLoadOptions int8_options;
  int8_options.quant.format = QuantFormat::int8;
  WeightLoader int8_loader(checkpoint, identity_tensor_name, "transformer", int8_options);
  const LinearLayer int8 =
      int8_loader.linear("transformer_blocks.0.ff", out, in, false, DType::bf16);
  ASSERT_TRUE(int8.is_quantized());
  EXPECT_EQ(int8.quantized().format(), QuantFormat::int8);
  const QuantizedWeight expected_int8 = quantize_int8(decoded_bf16);
  EXPECT_EQ(std::memcmp(int8.quantized().weight().values.data(), expected_int8.values.data(),
                        expected_int8.values.nbytes()),
            0);
  EXPECT_EQ(int8.quantized().weight().scales.to_floats(), expected_int8.scales.to_floats());
  EXPECT_NO_THROW(int8_loader.finish());
}

TEST_F(StoredWeightTest, LoaderTakesFp8Norm) {
  const SafetensorsCheckpoint checkpoint = write(
      {{"norm.weight", Tensor::from_floats(std::vector<float>{1.0f, 0.5f}, {2}, DType::fp8_e4m3)}});
  WeightLoader loader(checkpoint, identity_tensor_name, "transformer");
  EXPECT_EQ(loader.take("norm.weight", {2}, DType::bf16).to_floats(),
            (std::vector<float>{1.0f, 0.5f}));
}

}  // namespace
}  // namespace ethereal::quant
