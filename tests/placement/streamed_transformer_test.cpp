// A transformer wide enough that every linear weight gets its own mapped allocation (768 wide,
// 4 blocks of 42 MiB in bf16), so differences in resident memory are measurable. Streamed
// forward passes equal resident ones bit for bit, memory stays within the kept blocks,
// released memory leaves the process, and a truncated file stops streaming with an IoError.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/random_checkpoint.h"
#include "models/qwen_image/transformer.h"
#include "models/tiny_model.h"
#include "placement_test_support.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "runtime/system_memory.h"

namespace ethereal {
namespace {

using placement_test::EventRecorder;
using placement_test::TemporaryDirectory;

constexpr std::int64_t kLayers = 4;
constexpr std::int64_t kMiB = 1024 * 1024;

nlohmann::json wide_config() {
  return {{"_class_name", "QwenImageTransformer2DModel"},
          {"patch_size", 2},
          {"in_channels", 64},
          {"out_channels", 16},
          {"num_layers", kLayers},
          {"attention_head_dim", 128},
          {"num_attention_heads", 6},
          {"joint_attention_dim", 64},
          {"guidance_embeds", false},
          {"axes_dims_rope", {16, 56, 56}},
          {"zero_cond_t", true}};
}

TransformerInputs small_inputs() {
  std::vector<float> image(32 * 64);
  std::vector<float> text(8 * 64);
  for (std::size_t i = 0; i < image.size(); ++i) {
    image[i] = static_cast<float>((i * 37) % 101) / 50.0f - 1.0f;
  }
  for (std::size_t i = 0; i < text.size(); ++i) {
    text[i] = static_cast<float>((i * 11) % 29) / 14.0f - 1.0f;
  }
  TransformerInputs inputs;
  inputs.hidden_states = Tensor::from_floats(image, {32, 64});
  inputs.encoder_hidden_states = Tensor::from_floats(text, {8, 64});
  inputs.sigma = 0.6;
  inputs.img_shapes = {{1, 4, 4}, {1, 4, 4}};  // target and one reference
  return inputs;
}

std::int64_t rss() {
  return static_cast<std::int64_t>(read_process_memory().resident_bytes);
}

class StreamedTransformerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    directory_ = std::make_unique<TemporaryDirectory>();
    std::vector<std::pair<std::string, Shape>> tensors;
    for (const TensorSpec& spec : transformer_tensor_specs(wide_config())) {
      tensors.emplace_back(spec.name, spec.shape);
    }
    write_random_checkpoint(path(), tensors, 21);
    config_ = std::make_unique<QwenImageTransformerConfig>(
        QwenImageTransformerConfig::from_json(wide_config(), "wide transformer"));
  }
  static void TearDownTestSuite() {
    config_.reset();
    directory_.reset();
  }

  static std::filesystem::path path() { return *directory_ / "wide.safetensors"; }

  static std::shared_ptr<const SafetensorsCheckpoint> open() {
    return std::make_shared<const SafetensorsCheckpoint>(SafetensorsCheckpoint::open(path()));
  }

  static QwenImageTransformer load_streamed(
      const std::shared_ptr<const SafetensorsCheckpoint>& file, int kept,
      EventRecorder* recorder = nullptr) {
    TransformerStreamingOptions streaming;
    streaming.kept_blocks = kept;
    if (recorder != nullptr) {
      streaming.observer = std::make_shared<const ResidencyObserver>(recorder->sink());
    }
    return QwenImageTransformer::load_streamed(file, *config_, ModelPrecision::bf16(),
                                               identity_tensor_name, {}, streaming);
  }

  static std::unique_ptr<TemporaryDirectory> directory_;
  static std::unique_ptr<QwenImageTransformerConfig> config_;
};

std::unique_ptr<TemporaryDirectory> StreamedTransformerTest::directory_;
std::unique_ptr<QwenImageTransformerConfig> StreamedTransformerTest::config_;

TEST_F(StreamedTransformerTest, StreamedForwardEqualsResident) {
  const auto file = open();
  const QwenImageTransformer resident =
      QwenImageTransformer::load(*file, *config_, ModelPrecision::bf16());
  const std::vector<float> expected = resident.forward(small_inputs()).to_floats();
  for (int kept : {1, 2}) {
    const QwenImageTransformer streamed = load_streamed(file, kept);
    ASSERT_TRUE(streamed.streams_blocks());
    // Twice through one stream: the second pass starts from blocks loaded ahead.
    TransformerBlockStream stream = streamed.open_block_stream();
    TransformerForwardOptions options;
    options.block_stream = &stream;
    for (int pass = 0; pass < 2; ++pass) {
      EXPECT_EQ(streamed.forward(small_inputs(), options).to_floats(), expected)
          << "kept_blocks " << kept << ", pass " << pass;
    }
    // Without a stream, each call opens its own.
    EXPECT_EQ(streamed.forward(small_inputs()).to_floats(), expected) << "kept " << kept;
  }
}

TEST_F(StreamedTransformerTest, PeakAllocatedHoldsKeptBlocksOnly) {
  const auto file = open();
  for (int kept : {1, 2}) {
    CpuCachingAllocator allocator;
    const ScopedAllocator scope(allocator);
    EventRecorder recorder;
    const QwenImageTransformer streamed = load_streamed(file, kept, &recorder);
    const std::int64_t top = allocator.stats().allocated_bytes.current;
    allocator.reset_peaks();
    (void)streamed.forward(small_inputs());
    std::int64_t block = 0;
    for (const ResidencyEvent& event : recorder.events()) {
      block = std::max(block, static_cast<std::int64_t>(event.bytes));
    }
    // Largest stored block tensor (img_mod.1 [6D, D] bf16): the read buffer of one load.
    const std::int64_t staging = 6 * 768 * 768 * 2;
    // Working memory of this small input is well under 1 MiB.
    const std::int64_t bound = top + kept * block + staging + kMiB;
    EXPECT_LE(allocator.stats().allocated_bytes.peak, bound) << "kept " << kept;
    EXPECT_LT(allocator.stats().allocated_bytes.peak, top + kLayers * block) << "kept " << kept;
  }
}

// A forward call without a caller's stream opens a stream limited to its one pass. Each block
// is loaded, computed and offloaded once, and no block of a next pass is loaded ahead.
TEST_F(StreamedTransformerTest, OwnStreamLoadsEachBlockOnce) {
  const auto file = open();
  for (int kept : {1, 2}) {
    EventRecorder recorder;
    const QwenImageTransformer streamed = load_streamed(file, kept, &recorder);
    (void)streamed.forward(small_inputs());

    std::vector<int> loads(kLayers, 0);
    std::vector<int> computes(kLayers, 0);
    std::vector<int> offloads(kLayers, 0);
    for (const ResidencyEvent& event :
         placement_test::events_of(recorder.events(), kTransformerBlockGroup)) {
      ASSERT_GE(event.index, 0) << "kept " << kept;
      ASSERT_LT(event.index, kLayers) << "kept " << kept;
      const auto index = static_cast<std::size_t>(event.index);
      if (event.kind == ResidencyEventKind::onload_start) {
        ++loads[index];
      } else if (event.kind == ResidencyEventKind::compute_start) {
        ++computes[index];
      } else if (event.kind == ResidencyEventKind::offload) {
        // A block offloaded before its computation was loaded ahead and never used.
        EXPECT_EQ(computes[index], offloads[index] + 1)
            << "kept " << kept << ": block " << index << " offloaded without being computed";
        ++offloads[index];
      }
    }
    for (std::size_t index = 0; index < static_cast<std::size_t>(kLayers); ++index) {
      EXPECT_EQ(loads[index], 1) << "kept " << kept << ", block " << index;
      EXPECT_EQ(computes[index], 1) << "kept " << kept << ", block " << index;
      EXPECT_EQ(offloads[index], 1) << "kept " << kept << ", block " << index;
    }
  }
}

// Resident memory measured from /proc/self/status. A resident load holds every block; a
// streamed pass holds the kept blocks; after release the process gives the bytes back.
TEST_F(StreamedTransformerTest, ResidentMemoryFallsAfterRelease) {
  const auto file = open();
  CpuCachingAllocator allocator;
  const ScopedAllocator scope(allocator);
  const std::int64_t before = rss();
  std::int64_t weights = 0;
  std::int64_t loaded = 0;
  {
    const ComponentResidency<QwenImageTransformer> component(
        "transformer",
        [&] { return QwenImageTransformer::load(*file, *config_, ModelPrecision::bf16()); },
        /*keep_loaded=*/false, nullptr);
    const ResidentHandle<QwenImageTransformer> handle = component.acquire();
    weights = allocator.stats().allocated_bytes.current;
    loaded = rss();
  }
  const std::int64_t released = rss();
  EXPECT_GE(loaded - before, weights * 9 / 10) << "a resident load should raise RSS by its size";
  EXPECT_LE(released - before, weights / 10) << "released weights stayed resident";
}

TEST_F(StreamedTransformerTest, StreamingKeepsResidentMemoryBounded) {
  const auto file = open();
  CpuCachingAllocator allocator;
  const ScopedAllocator scope(allocator);
  EventRecorder recorder;
  std::int64_t highest = 0;
  recorder.set_hook([&](const ResidencyEvent& event) {
    if (event.kind == ResidencyEventKind::compute_start) {
      highest = std::max(highest, rss());
    }
  });
  const std::int64_t before = rss();
  std::int64_t block = 0;
  {
    const QwenImageTransformer streamed = load_streamed(file, 2, &recorder);
    TransformerBlockStream stream = streamed.open_block_stream();
    TransformerForwardOptions options;
    options.block_stream = &stream;
    for (int pass = 0; pass < 2; ++pass) {
      (void)streamed.forward(small_inputs(), options);
    }
    for (const ResidencyEvent& event : recorder.events()) {
      block = std::max(block, static_cast<std::int64_t>(event.bytes));
    }
  }
  allocator.empty_cache();
  const std::int64_t after = rss();
  ASSERT_GT(block, 30 * kMiB);
  // Two blocks, one read buffer and the top-level weights (about 5 MiB), plus 16 MiB for
  // oneDNN's kernels and the heap.
  EXPECT_LE(highest - before, 2 * block + 7 * kMiB + 21 * kMiB);
  EXPECT_LT(highest - before, kLayers * block - block);
  EXPECT_LE(after - before, 16 * kMiB);
}

TEST_F(StreamedTransformerTest, TruncatedFileIsIoErrorAndFreesEverything) {
  const TemporaryDirectory copy_directory;
  const std::filesystem::path copy = copy_directory / "wide.safetensors";
  std::filesystem::copy_file(path(), copy);
  auto file = std::make_shared<const SafetensorsCheckpoint>(SafetensorsCheckpoint::open(copy));
  std::uint64_t cut = file->files().front().mapping().size();
  for (const std::string& name : file->names()) {
    if (name.rfind("transformer_blocks.2.", 0) == 0) {
      cut = std::min(cut, file->info(name).data_begin);
    }
  }

  CpuCachingAllocator allocator;
  const ScopedAllocator scope(allocator);
  const QwenImageTransformer streamed = load_streamed(file, 2);
  const std::int64_t baseline = allocator.stats().allocated_bytes.current;
  (void)streamed.forward(small_inputs());
  std::filesystem::resize_file(copy, cut);
  try {
    (void)streamed.forward(small_inputs());
    FAIL() << "a forward pass read past the end of a truncated file";
  } catch (const IoError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find(copy.string()), std::string::npos) << message;
    EXPECT_NE(message.find("transformer_blocks.2."), std::string::npos) << message;
  }
  EXPECT_EQ(allocator.stats().allocated_bytes.current, baseline);
}

}  // namespace
}  // namespace ethereal
