// Sequential offload from the transformer block cache: edits equal the resident ones for
// quantised formats and for bf16, the cache is written once and reused, a stale file is
// rewritten, and a dry run writes nothing.
#include "models/qwen_image/transformer_block_cache.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "models/qwen_image/transformer_tensor_names.h"
#include "models/tiny_model.h"
#include "pipeline/edit_pipeline.h"
#include "placement_test_support.h"
#include "runtime/allocator.h"

namespace ethereal {
namespace {

namespace fs = std::filesystem;
using placement_test::EventRecorder;
using placement_test::TemporaryDirectory;

Image checker_image(int width, int height) {
  Image image(width, height, 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      const bool dark = ((x / 8) + (y / 8)) % 2 == 0;
      image.at(x, y, 0) = dark ? 30 : 220;
      image.at(x, y, 1) = static_cast<std::uint8_t>((x * 3 + y) % 256);
      image.at(x, y, 2) = dark ? 200 : 40;
    }
  }
  return image;
}

EditRequest small_request() {
  EditRequest request;
  request.images = {checker_image(48, 40)};
  request.prompt = "swap the colours";
  request.steps = 2;
  request.seed = 3;
  request.output_size = ImageSize{48, 32};
  return request;
}

std::vector<fs::path> cache_files(const fs::path& directory) {
  std::vector<fs::path> files;
  if (fs::exists(directory)) {
    for (const auto& entry : fs::directory_iterator(directory)) {
      files.push_back(entry.path());
    }
  }
  return files;
}

class BlockCacheTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    directory_ = std::make_unique<TemporaryDirectory>();
    write_tiny_model(model(), 9);
  }
  static void TearDownTestSuite() { directory_.reset(); }

  static fs::path model() { return *directory_ / "model"; }

  static Image edit(Placement placement, std::optional<quant::QuantFormat> format,
                    BlockCachePolicy policy, const fs::path& cache) {
    PipelineLoadOptions options;
    options.placement = placement;
    options.quant.format = format;
    options.block_cache = policy;
    options.block_cache_directory = cache;
    return EditPipeline::load(ModelDirectory::open(model()), options).run(small_request()).image;
  }

  static std::unique_ptr<TemporaryDirectory> directory_;
};

std::unique_ptr<TemporaryDirectory> BlockCacheTest::directory_;

TEST_F(BlockCacheTest, QuantisedStreamingEqualsResident) {
  for (quant::QuantFormat format :
       {quant::QuantFormat::fp8_e4m3, quant::QuantFormat::nf4, quant::QuantFormat::int8}) {
    const TemporaryDirectory cache;
    const Image resident =
        edit(Placement::resident, format, BlockCachePolicy::automatic, cache.path());
    EXPECT_TRUE(cache_files(cache.path()).empty()) << "resident placement wrote a cache";
    const Image streamed =
        edit(Placement::sequential_offload, format, BlockCachePolicy::automatic, cache.path());
    EXPECT_EQ(cache_files(cache.path()).size(), 1u) << quant::quant_format_name(format);
    EXPECT_EQ(resident, streamed) << quant::quant_format_name(format);
    const Image uncached =
        edit(Placement::sequential_offload, format, BlockCachePolicy::never, cache.path());
    EXPECT_EQ(resident, uncached) << quant::quant_format_name(format);
  }
}

TEST_F(BlockCacheTest, PackedBf16CacheEqualsResident) {
  const TemporaryDirectory cache;
  const Image resident =
      edit(Placement::resident, std::nullopt, BlockCachePolicy::automatic, cache.path());
  const Image automatic =
      edit(Placement::sequential_offload, std::nullopt, BlockCachePolicy::automatic, cache.path());
  EXPECT_TRUE(cache_files(cache.path()).empty()) << "bf16 needs no cache by default";
  const Image cached =
      edit(Placement::sequential_offload, std::nullopt, BlockCachePolicy::always, cache.path());
  EXPECT_EQ(cache_files(cache.path()).size(), 1u);
  EXPECT_EQ(resident, automatic);
  EXPECT_EQ(resident, cached);
}

TEST_F(BlockCacheTest, WritesOnceAndRewritesStaleFile) {
  const TemporaryDirectory cache;
  const ModelDirectory directory = ModelDirectory::open(model());
  auto checkpoint = std::make_shared<const SafetensorsCheckpoint>(
      directory.open_weights(ModelComponent::transformer));
  QwenImageTransformerConfig config =
      QwenImageTransformerConfig::from_file(*directory.config_path(ModelComponent::transformer));
  WeightLoadOptions options;
  options.quant.format = quant::QuantFormat::fp8_e4m3;
  auto open = [&] {
    return TransformerBlockCache::open(checkpoint, comfy_transformer_tensor_name, options, config,
                                       ModelPrecision::bf16(), cache.path());
  };
  const auto first = open();
  EXPECT_TRUE(first->was_written());
  const auto second = open();
  EXPECT_FALSE(second->was_written());
  EXPECT_EQ(first->path(), second->path());

  // A damaged file (here cut to its first bytes) is written again.
  const fs::path path = first->path();
  fs::resize_file(path, 16);
  const auto third = open();
  EXPECT_TRUE(third->was_written());
  EXPECT_EQ(third->path(), path);

  // Another format is another key, so another file.
  options.quant.format = quant::QuantFormat::int8;
  const auto other = open();
  EXPECT_TRUE(other->was_written());
  EXPECT_NE(other->path(), path);
  EXPECT_EQ(cache_files(cache.path()).size(), 2u);
}

TEST_F(BlockCacheTest, DryRunWritesNothing) {
  const TemporaryDirectory cache;
  CpuCachingAllocator dry(CpuCachingAllocator::Options{.dry_run = true});
  const ScopedAllocator scope(dry);
  PipelineLoadOptions options;
  options.placement = Placement::sequential_offload;
  options.quant.format = quant::QuantFormat::nf4;
  options.block_cache_directory = cache.path();
  EventRecorder recorder;
  options.on_residency_event = recorder.sink();
  const EditPipeline pipeline = EditPipeline::load(ModelDirectory::open(model()), options);
  (void)pipeline.run(small_request());
  EXPECT_TRUE(cache_files(cache.path()).empty());
  int block_loads = 0;
  for (const ResidencyEvent& event : recorder.events()) {
    block_loads +=
        event.group == kTransformerBlockGroup && event.kind == ResidencyEventKind::onload_end;
  }
  EXPECT_GT(block_loads, 0);
  EXPECT_EQ(dry.stats().allocated_bytes.current, 0);
}

}  // namespace
}  // namespace ethereal
