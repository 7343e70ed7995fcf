#include "memory/model_memory_estimate.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "io/safetensors_checkpoint.h"
#include "memory_test_support.h"
#include "models/tiny_model.h"
#include "quant/quantize.h"
#include "runtime/error.h"
#include "runtime/tensor.h"

namespace ethereal::memory {
namespace {

using testing::TemporaryDirectory;

std::uint64_t ceil_div(std::uint64_t a, std::uint64_t b) {
  return (a + b - 1) / b;
}

// The rule, restated from its description: 2-D ".weight" tensors of linear layers inside the
// transformer blocks, the language-model layers and the vision blocks.
bool quantizable(const std::string& component, const std::string& name, const Shape& shape) {
  if (shape.size() != 2 || !name.ends_with(".weight")) {
    return false;
  }
  if (component == "transformer") {
    return name.starts_with("transformer_blocks.");
  }
  if (component == "text_encoder") {
    return name.starts_with("model.layers.") || name.starts_with("visual.blocks.");
  }
  return false;
}

struct ExpectedBytes {
  std::uint64_t stored = 0;
  std::uint64_t quantizable_count = 0;
  std::map<std::string, std::uint64_t> per_format;
};

ExpectedBytes expected_bytes(const std::string& component,
                             const std::filesystem::path& checkpoint_path) {
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(checkpoint_path);
  ExpectedBytes expected;
  for (const std::string& name : checkpoint.names()) {
    const TensorInfo& info = checkpoint.info(name);
    expected.stored += info.nbytes();
    if (!quantizable(component, name, info.shape)) {
      for (const char* format : {"bf16", "fp8_e4m3", "nf4", "int8"}) {
        expected.per_format[format] += info.nbytes();
      }
      continue;
    }
    ++expected.quantizable_count;
    const std::uint64_t out = static_cast<std::uint64_t>(info.shape[0]);
    const std::uint64_t n = out * static_cast<std::uint64_t>(info.shape[1]);
    const std::uint64_t blocks = ceil_div(n, 64);
    expected.per_format["bf16"] += 2 * n;
    expected.per_format["fp8_e4m3"] += n + 4 * out;
    expected.per_format["int8"] += n + 4 * out;
    expected.per_format["nf4"] += ceil_div(n, 2) + blocks + 4 * ceil_div(blocks, 256) + 1024;
  }
  return expected;
}

TEST(EstimateModelMemory, TinyModelMatchesHeaders) {
  TemporaryDirectory directory;
  const std::filesystem::path model = directory / "model";
  write_tiny_model(model, 5);

  const ModelMemoryEstimate estimate = estimate_model_memory(model);
  ASSERT_EQ(estimate.components.size(), 3u);
  const std::vector<std::pair<std::string, std::filesystem::path>> files = {
      {"transformer", model / "transformer" / "diffusion_pytorch_model.safetensors"},
      {"text_encoder", model / "text_encoder" / "model.safetensors"},
      {"vae", model / "vae" / "diffusion_pytorch_model.safetensors"},
  };
  for (std::size_t i = 0; i < files.size(); ++i) {
    const auto& [component, path] = files[i];
    SCOPED_TRACE(component);
    const ComponentWeightBytes& actual = estimate.components[i];
    const ExpectedBytes expected = expected_bytes(component, path);
    EXPECT_EQ(actual.component, component);
    EXPECT_EQ(actual.stored_bytes, expected.stored);
    EXPECT_EQ(actual.quantizable_tensor_count, expected.quantizable_count);
    EXPECT_EQ(actual.bytes_per_format, expected.per_format);
  }

  EXPECT_GT(estimate.components[0].quantizable_tensor_count, 0u);
  EXPECT_GT(estimate.components[1].quantizable_tensor_count, 0u);
  EXPECT_EQ(estimate.components[2].quantizable_tensor_count, 0u);
  // The tiny model is stored in bf16, so bf16 is the stored size.
  EXPECT_EQ(estimate.total_bytes("bf16"), estimate.components[0].stored_bytes +
                                              estimate.components[1].stored_bytes +
                                              estimate.components[2].stored_bytes);
  EXPECT_LT(estimate.total_bytes("int8"), estimate.total_bytes("bf16"));
  EXPECT_EQ(estimate.total_bytes("int8"), estimate.total_bytes("fp8_e4m3"));
  EXPECT_THROW(estimate.total_bytes("int4"), InvalidInputError);

  const nlohmann::json json = estimate.to_json();
  EXPECT_EQ(json.at("total_bytes_per_format").at("nf4"), estimate.total_bytes("nf4"));
  EXPECT_EQ(json.at("components").size(), 3u);
}

TEST(EstimateModelMemory, MissingDirectory) {
  TemporaryDirectory directory;
  EXPECT_THROW(estimate_model_memory(directory / "absent"), InvalidInputError);
}

TEST(QuantizedWeightBytes, MatchesQuantizedWeights) {
  struct WeightShape {
    std::int64_t out;
    std::int64_t in;
  };
  for (const WeightShape shape : {WeightShape{3, 70}, WeightShape{16, 64}, WeightShape{130, 129}}) {
    const std::vector<float> values(static_cast<std::size_t>(shape.out * shape.in), 0.25f);
    const Tensor weight = Tensor::from_floats(values, {shape.out, shape.in});
    for (const quant::QuantFormat format :
         {quant::QuantFormat::fp8_e4m3, quant::QuantFormat::nf4, quant::QuantFormat::int8}) {
      SCOPED_TRACE(std::string(quant::quant_format_name(format)) + " " + std::to_string(shape.out) +
                   "x" + std::to_string(shape.in));
      const quant::QuantizedWeight quantized = quant::quantize(weight, format);
      EXPECT_EQ(quantized_weight_bytes(format, shape.out, shape.in), quantized.nbytes());
    }
  }
  EXPECT_THROW(quantized_weight_bytes(quant::QuantFormat::int8, 0, 4), InvalidInputError);
}

}  // namespace
}  // namespace ethereal::memory
