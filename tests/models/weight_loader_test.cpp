#include "models/weight_loader.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "io/safetensors_writer.h"
#include "runtime/error.h"
#include "support/errors.h"
#include "support/files.h"
#include "support/inputs.h"

namespace ethereal {
namespace {

namespace fs = std::filesystem;
using test_support::error_message;

class WeightLoaderTest : public ::testing::Test {
 protected:
  fs::path write(const std::vector<std::pair<std::string, Tensor>>& tensors) {
    const fs::path path = directory_ / "weights.safetensors";
    write_safetensors(path, tensors);
    return path;
  }

  // bf16 values start, start + 1, ...
  static Tensor values(const Shape& shape, float start) {
    return test_support::arange_tensor(shape, start, DType::bf16);
  }

  test_support::TemporaryDirectory directory_{"weight_loader"};
};

TEST_F(WeightLoaderTest, TakesTensorsInRequestedDtype) {
  const fs::path path = write({{"layer.weight", values({3, 2}, 1.0f)},
                               {"layer.bias", values({3}, 10.0f)},
                               {"norm.weight", values({2}, 0.5f)}});
  SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(path);
  WeightLoader loader(checkpoint, identity_tensor_name, "test");
  Tensor norm = loader.take("norm.weight", {2}, DType::f32);
  EXPECT_EQ(norm.dtype(), DType::f32);
  EXPECT_EQ(norm.to_floats(), (std::vector<float>{0.5f, 1.5f}));
  EXPECT_FALSE(norm.storage()->is_external()) << "weights are copied into allocator memory";

  LinearLayer linear = loader.linear("layer", 3, 2, true, DType::f32);
  Tensor y = linear.forward(Tensor::from_floats(std::vector<float>{1.0f, 1.0f}, {1, 2}));
  EXPECT_EQ(y.to_floats(), (std::vector<float>{13.0f, 18.0f, 23.0f}));
  EXPECT_NO_THROW(loader.finish());
}

TEST_F(WeightLoaderTest, ReportsWrongShapeWithFileAndTensor) {
  const fs::path path = write({{"layer.weight", values({3, 2}, 0.0f)}});
  SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(path);
  WeightLoader loader(checkpoint, identity_tensor_name, "transformer");
  const std::string message = error_message([&] {
    loader.take("layer.weight", {2, 3}, DType::f32);
  });
  EXPECT_NE(message.find("weights.safetensors"), std::string::npos) << message;
  EXPECT_NE(message.find("\"layer.weight\" has shape [3, 2]"), std::string::npos) << message;
  EXPECT_NE(message.find("expects [2, 3]"), std::string::npos) << message;
}

TEST_F(WeightLoaderTest, ReportsMissingAndUnexpectedTensors) {
  const fs::path path = write({{"a.weight", values({2}, 0.0f)},
                               {"b.weight", values({2}, 0.0f)},
                               {"lm_head.weight", values({2}, 0.0f)}});
  SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(path);
  WeightLoader loader(checkpoint, identity_tensor_name, "text encoder");
  const std::string missing = error_message([&] { loader.take("c.weight", {2}, DType::f32); });
  EXPECT_NE(missing.find("text encoder weight \"c.weight\" is missing"), std::string::npos)
      << missing;

  loader.take("a.weight", {2}, DType::f32);
  loader.ignore_prefix("lm_head.");
  const std::string unexpected = error_message([&] { loader.finish(); });
  EXPECT_NE(unexpected.find("1 tensor(s)"), std::string::npos) << unexpected;
  EXPECT_NE(unexpected.find("\"b.weight\""), std::string::npos) << unexpected;
}

TEST_F(WeightLoaderTest, MapsFileNamesAndRejectsCollisions) {
  const fs::path path =
      write({{"model.diffusion_model.x.weight", values({2}, 0.0f)}, {"marker", values({1}, 0.0f)}});
  SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(path);
  auto strip_prefix = [](std::string_view name) -> std::optional<std::string> {
    constexpr std::string_view kPrefix = "model.diffusion_model.";
    if (name == "marker") {
      return std::nullopt;
    }
    if (name.starts_with(kPrefix)) {
      name.remove_prefix(kPrefix.size());
    }
    return std::string(name);
  };
  WeightLoader loader(checkpoint, strip_prefix, "transformer");
  EXPECT_TRUE(loader.contains("x.weight"));
  loader.take("x.weight", {2}, DType::bf16);
  EXPECT_NO_THROW(loader.finish());

  const fs::path clash =
      write({{"model.diffusion_model.y", values({1}, 0.0f)}, {"y", values({1}, 0.0f)}});
  SafetensorsCheckpoint clashing = SafetensorsCheckpoint::open(clash);
  const std::string message =
      error_message([&] { WeightLoader(clashing, strip_prefix, "transformer"); });
  EXPECT_NE(message.find("both map to"), std::string::npos) << message;
}

TEST_F(WeightLoaderTest, DryRunAllocatesWithoutReading) {
  const fs::path path = write({{"layer.weight", values({64, 32}, 0.0f)}});
  SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(path);
  CpuCachingAllocator dry(CpuCachingAllocator::Options{.dry_run = true});
  ScopedAllocator scope(dry);
  WeightLoader loader(checkpoint, identity_tensor_name, "test");
  LinearLayer linear = loader.linear("layer", 64, 32, false, DType::bf16);
  EXPECT_TRUE(linear.packed().packed_weight().is_dry());
  EXPECT_GE(dry.stats().allocated_bytes.current, 64 * 32 * 2);
}

}  // namespace
}  // namespace ethereal
