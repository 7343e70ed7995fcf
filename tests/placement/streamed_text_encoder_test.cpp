// A Qwen2.5-VL language model 256 wide with 3 layers of 1.5 MiB each in bf16, large enough
// that the layers dominate the working memory of a short prompt. Streamed layers give results
// bit-identical to the resident model for two sequences at once. The allocator peak stays
// within the kept layers plus working memory, and each layer loads once per forward. A dry run
// allocates what a real run does. Embedding rows come from the file without the table, and a
// file truncated while the layers stream stops the forward with an IoError.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/random_checkpoint.h"
#include "models/qwen2_5_vl/language_model.h"
#include "models/qwen2_5_vl/language_model_streaming.h"
#include "models/qwen2_5_vl/positions.h"
#include "models/tiny_model.h"
#include "placement_test_support.h"
#include "runtime/allocator.h"
#include "runtime/error.h"

namespace ethereal {
namespace {

using placement_test::EventRecorder;
using placement_test::TemporaryDirectory;

constexpr std::int64_t kLayers = 3;
constexpr std::int64_t kVocab = 2048;
constexpr std::int64_t kImageToken = 2000;  // no test prompt contains it

nlohmann::json wide_config() {
  return {{"architectures", {"Qwen2_5_VLForConditionalGeneration"}},
          {"model_type", "qwen2_5_vl"},
          {"hidden_size", 256},
          {"num_hidden_layers", kLayers},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"intermediate_size", 768},
          {"rms_norm_eps", 1e-6},
          {"rope_theta", 1000000.0},
          {"rope_scaling", {{"type", "mrope"}, {"mrope_section", {8, 12, 12}}}},
          {"vocab_size", kVocab},
          {"image_token_id", kImageToken},
          {"video_token_id", kImageToken + 1},
          {"vision_start_token_id", kImageToken + 2},
          {"vision_end_token_id", kImageToken + 3},
          {"tie_word_embeddings", false},
          {"vision_config",
           {{"depth", 1},
            {"hidden_size", 32},
            {"intermediate_size", 64},
            {"num_heads", 2},
            {"in_chans", 3},
            {"out_hidden_size", 256},
            {"patch_size", 14},
            {"spatial_merge_size", 2},
            {"temporal_patch_size", 2},
            {"window_size", 56},
            {"fullatt_block_indexes", {0}},
            {"hidden_act", "silu"}}}};
}

// Token ids of a conditional and a shorter negative prompt.
std::vector<std::vector<std::int64_t>> prompt_ids() {
  std::vector<std::int64_t> conditional;
  for (std::int64_t i = 0; i < 23; ++i) {
    conditional.push_back((i * 389 + 7) % 1999);
  }
  return {conditional, {5, 1998, 77, 0, 1500, 12}};
}

// The bytes of a contiguous tensor, for bit-for-bit comparisons.
std::string bytes_of(const Tensor& tensor) {
  const Tensor contiguous = tensor.contiguous();
  return {static_cast<const char*>(contiguous.data()), contiguous.nbytes()};
}

class StreamedTextEncoderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    directory_ = std::make_unique<TemporaryDirectory>();
    std::vector<std::pair<std::string, Shape>> tensors;
    for (const TensorSpec& spec : text_encoder_tensor_specs(wide_config())) {
      tensors.emplace_back(spec.name, spec.shape);
    }
    write_random_checkpoint(path(), tensors, 33);
    config_ = std::make_unique<Qwen25VlConfig>(
        Qwen25VlConfig::from_json(wide_config(), "wide text encoder"));
  }
  static void TearDownTestSuite() {
    config_.reset();
    directory_.reset();
  }

  static std::filesystem::path path() { return *directory_ / "text_encoder.safetensors"; }

  static std::shared_ptr<const SafetensorsCheckpoint> open(const std::filesystem::path& file) {
    return std::make_shared<const SafetensorsCheckpoint>(SafetensorsCheckpoint::open(file));
  }

  static Qwen25VlLanguageModel load_resident(const SafetensorsCheckpoint& checkpoint,
                                             ModelPrecision precision) {
    WeightLoader loader(checkpoint, identity_tensor_name, "text encoder");
    return Qwen25VlLanguageModel::load(loader, *config_, precision);
  }

  static Qwen25VlStreamedLanguageModel load_streamed(
      const std::shared_ptr<const SafetensorsCheckpoint>& checkpoint, ModelPrecision precision,
      int kept, EventRecorder* recorder = nullptr) {
    Qwen25VlLayerStreamingOptions streaming;
    streaming.kept_layers = kept;
    if (recorder != nullptr) {
      streaming.observer = std::make_shared<const ResidencyObserver>(recorder->sink());
    }
    return Qwen25VlStreamedLanguageModel::load(
        std::make_shared<Qwen25VlLayerSource>(checkpoint, WeightLoadOptions{}, *config_, precision),
        streaming);
  }

  static std::vector<Tensor> positions() {
    std::vector<Tensor> result;
    for (const std::vector<std::int64_t>& ids : prompt_ids()) {
      result.push_back(mrope_position_ids(ids, {}, *config_));
    }
    return result;
  }

  // Allocator bytes of one layer and of the largest stored layer tensor (the read buffer of a
  // load), measured against a dry-run allocator.
  static std::int64_t layer_footprint() {
    Qwen25VlLayerSource source(open(path()), {}, *config_, ModelPrecision::bf16());
    CpuCachingAllocator dry(CpuCachingAllocator::Options{.dry_run = true});
    const ScopedAllocator scope(dry);
    const Qwen25VlDecoderLayer layer = source.load_layer(0);
    return dry.stats().allocated_bytes.current;
  }
  // The token embeddings of every prompt of prompt_ids().
  static std::vector<Tensor> embed_prompts(const Qwen25VlStreamedLanguageModel& streamed) {
    std::vector<Tensor> embeds;
    for (const std::vector<std::int64_t>& ids : prompt_ids()) {
      embeds.push_back(streamed.embed(ids, Tensor()));
    }
    return embeds;
  }
  static std::int64_t read_buffer() {
    Qwen25VlLayerSource source(open(path()), {}, *config_, ModelPrecision::bf16());
    return static_cast<std::int64_t>(
        CpuCachingAllocator::round_size(source.load_workspace_bytes()));
  }

  static std::unique_ptr<TemporaryDirectory> directory_;
  static std::unique_ptr<Qwen25VlConfig> config_;
};

std::unique_ptr<TemporaryDirectory> StreamedTextEncoderTest::directory_;
std::unique_ptr<Qwen25VlConfig> StreamedTextEncoderTest::config_;

// bf16 keeps the stored dtype; f32 converts each row and weight, as a resident load does.
TEST_F(StreamedTextEncoderTest, StreamedForwardEqualsResident) {
  const auto checkpoint = open(path());
  for (const ModelPrecision precision : {ModelPrecision::bf16(), ModelPrecision::f32()}) {
    const std::string label = precision.weight_dtype == DType::bf16 ? "bf16" : "f32";
    const Qwen25VlLanguageModel resident = load_resident(*checkpoint, precision);
    const std::vector<Tensor> position_ids = positions();
    std::vector<Tensor> resident_embeds;
    std::vector<std::string> expected;
    for (std::size_t k = 0; k < prompt_ids().size(); ++k) {
      resident_embeds.push_back(resident.embed(prompt_ids()[k], Tensor()));
      expected.push_back(bytes_of(resident.forward(resident_embeds[k], position_ids[k])));
    }
    for (int kept : {1, 2}) {
      const Qwen25VlStreamedLanguageModel streamed = load_streamed(checkpoint, precision, kept);
      std::vector<Tensor> embeds;
      for (std::size_t k = 0; k < prompt_ids().size(); ++k) {
        embeds.push_back(streamed.embed(prompt_ids()[k], Tensor()));
        EXPECT_EQ(bytes_of(embeds[k]), bytes_of(resident_embeds[k]))
            << label << ", kept " << kept << ": embeddings of sequence " << k;
      }
      const std::vector<Tensor> hidden = streamed.forward(embeds, position_ids);
      ASSERT_EQ(hidden.size(), expected.size());
      for (std::size_t k = 0; k < hidden.size(); ++k) {
        EXPECT_EQ(bytes_of(hidden[k]), expected[k])
            << label << ", kept " << kept << ": hidden states of sequence " << k;
      }
    }
  }
}

// Peak during the forward: the kept layers, one read buffer, and at most the working memory
// of both sequences' resident forward passes (each sequence's hidden states and tables stay
// allocated across the layers).
TEST_F(StreamedTextEncoderTest, PeakStaysWithinKeptLayers) {
  const auto checkpoint = open(path());
  const std::vector<Tensor> position_ids = positions();
  std::int64_t resident_working = 0;
  std::int64_t resident_weights = 0;
  {
    CpuCachingAllocator allocator;
    const ScopedAllocator scope(allocator);
    const Qwen25VlLanguageModel resident = load_resident(*checkpoint, ModelPrecision::bf16());
    resident_weights = allocator.stats().allocated_bytes.current;
    const std::vector<std::vector<std::int64_t>> ids = prompt_ids();
    for (std::size_t k = 0; k < ids.size(); ++k) {
      const Tensor embeds = resident.embed(ids[k], Tensor());
      const std::int64_t before = allocator.stats().allocated_bytes.current;
      allocator.reset_peaks();
      (void)resident.forward(embeds, position_ids[k]);
      resident_working += allocator.stats().allocated_bytes.peak - before;
    }
  }
  const std::int64_t layer = layer_footprint();
  ASSERT_GT(layer, 1024 * 1024);
  for (int kept : {1, 2}) {
    CpuCachingAllocator allocator;
    const ScopedAllocator scope(allocator);
    const Qwen25VlStreamedLanguageModel streamed =
        load_streamed(checkpoint, ModelPrecision::bf16(), kept);
    const std::vector<Tensor> embeds = embed_prompts(streamed);
    // Loading and embedding never hold the embedding table (kVocab x 256 bf16, 1 MiB), not
    // even for a moment.
    EXPECT_LT(allocator.stats().allocated_bytes.peak, kVocab * 256 * 2 / 4) << "kept " << kept;
    const std::int64_t before = allocator.stats().allocated_bytes.current;
    allocator.reset_peaks();
    (void)streamed.forward(embeds, position_ids);
    const std::int64_t peak = allocator.stats().allocated_bytes.peak - before;
    EXPECT_LE(peak, kept * layer + read_buffer() + resident_working) << "kept " << kept;
    EXPECT_LT(peak, kLayers * layer) << "kept " << kept << ": more than the kept layers";
    EXPECT_LT(allocator.stats().allocated_bytes.peak, resident_weights) << "kept " << kept;
    EXPECT_EQ(allocator.stats().allocated_bytes.current, before) << "kept " << kept;
  }
}

TEST_F(StreamedTextEncoderTest, EachLayerLoadsOncePerForward) {
  const auto checkpoint = open(path());
  for (int kept : {1, 2}) {
    EventRecorder recorder;
    const Qwen25VlStreamedLanguageModel streamed =
        load_streamed(checkpoint, ModelPrecision::bf16(), kept, &recorder);
    const std::vector<Tensor> embeds = embed_prompts(streamed);
    (void)streamed.forward(embeds, positions());

    const std::vector<ResidencyEvent> events =
        placement_test::events_of(recorder.events(), kTextEncoderLayerGroup);
    std::vector<std::int64_t> loaded;
    std::vector<std::int64_t> computed;
    int offloads = 0;
    for (const ResidencyEvent& event : events) {
      if (event.kind == ResidencyEventKind::onload_end) {
        loaded.push_back(event.index);
      } else if (event.kind == ResidencyEventKind::compute_start) {
        computed.push_back(event.index);
      } else if (event.kind == ResidencyEventKind::offload) {
        ++offloads;
      }
    }
    const std::vector<std::int64_t> in_order = {0, 1, 2};
    EXPECT_EQ(loaded, in_order) << "kept " << kept;
    EXPECT_EQ(computed, in_order) << "kept " << kept;
    EXPECT_EQ(offloads, kLayers) << "kept " << kept;
    EXPECT_LE(placement_test::max_on_device(events, kTextEncoderLayerGroup), kept)
        << "kept " << kept;
  }
}

// The planner's dry run makes the same allocations without reading. With one kept layer the loads
// run inside acquire() in both runs, so the peaks are equal. With two, the dry run loads ahead
// synchronously and counts a read buffer during every layer's compute, the most a worker
// loading ahead can hold.
TEST_F(StreamedTextEncoderTest, DryRunPeakMatchesRealRun) {
  const auto checkpoint = open(path());
  for (int kept : {1, 2}) {
    std::int64_t peaks[2] = {0, 0};
    for (const bool dry_run : {false, true}) {
      CpuCachingAllocator allocator(CpuCachingAllocator::Options{.dry_run = dry_run});
      const ScopedAllocator scope(allocator);
      const Qwen25VlStreamedLanguageModel streamed =
          load_streamed(checkpoint, ModelPrecision::bf16(), kept);
      const std::vector<Tensor> embeds = embed_prompts(streamed);
      const std::vector<Tensor> hidden = streamed.forward(embeds, positions());
      EXPECT_EQ(hidden.front().is_dry(), dry_run);
      peaks[dry_run ? 1 : 0] = allocator.stats().allocated_bytes.peak;
    }
    if (kept == 1) {
      EXPECT_EQ(peaks[1], peaks[0]);
    } else {
      // A real run may not have loaded ahead at its peak moment; the dry run always has.
      EXPECT_GE(peaks[1], peaks[0]);
      EXPECT_LE(peaks[1], peaks[0] + layer_footprint() + read_buffer());
    }
  }
}

// The embedding rows are read with pread: a table cut short after the file was opened is an
// IoError naming the file and the table, not a crash.
TEST_F(StreamedTextEncoderTest, TruncatedTableIsIoError) {
  const std::filesystem::path copy = *directory_ / "short_table.safetensors";
  std::filesystem::copy_file(path(), copy, std::filesystem::copy_options::overwrite_existing);
  const auto checkpoint = open(copy);
  const Qwen25VlStreamedLanguageModel streamed =
      load_streamed(checkpoint, ModelPrecision::bf16(), 2);
  const TensorInfo& table = checkpoint->info("model.embed_tokens.weight");
  // Rows from 1000 on are gone; the conditional prompt uses some of them.
  std::filesystem::resize_file(copy, table.data_begin + 1000 * 256 * 2);
  try {
    (void)streamed.embed(prompt_ids().front(), Tensor());
    FAIL() << "the embedding read past the end of the file";
  } catch (const IoError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find(copy.string()), std::string::npos) << message;
    EXPECT_NE(message.find("model.embed_tokens.weight"), std::string::npos) << message;
  }
}

// A layer file truncated once layer 0 is loaded: the worker's load of layer 1 fails, the
// forward rethrows its IoError, and every byte is freed.
TEST_F(StreamedTextEncoderTest, TruncatedLayerStopsForward) {
  const std::filesystem::path copy = *directory_ / "short_layers.safetensors";
  std::filesystem::copy_file(path(), copy, std::filesystem::copy_options::overwrite_existing);
  const auto checkpoint = open(copy);
  std::uint64_t layer_one = checkpoint->files().front().mapping().size();
  for (const std::string& name : checkpoint->names()) {
    if (name.starts_with("model.layers.1.")) {
      layer_one = std::min(layer_one, checkpoint->info(name).data_begin);
    }
  }
  CpuCachingAllocator allocator;
  const ScopedAllocator scope(allocator);
  EventRecorder recorder;
  recorder.set_hook([&](const ResidencyEvent& event) {
    if (event.group == kTextEncoderLayerGroup && event.index == 0 &&
        event.kind == ResidencyEventKind::onload_end) {
      std::filesystem::resize_file(copy, layer_one);
    }
  });
  {
    const Qwen25VlStreamedLanguageModel streamed =
        load_streamed(checkpoint, ModelPrecision::bf16(), 2, &recorder);
    const std::vector<Tensor> embeds = embed_prompts(streamed);
    const std::int64_t baseline = allocator.stats().allocated_bytes.current;
    try {
      (void)streamed.forward(embeds, positions());
      FAIL() << "the forward finished although the file was truncated";
    } catch (const IoError& error) {
      const std::string message = error.what();
      EXPECT_NE(message.find(copy.string()), std::string::npos) << message;
      EXPECT_NE(message.find("model.layers.1."), std::string::npos) << message;
    }
    EXPECT_EQ(allocator.stats().allocated_bytes.current, baseline);
  }
  EXPECT_EQ(allocator.stats().allocated_bytes.current, 0);
}

TEST_F(StreamedTextEncoderTest, RejectsMismatchedInputs) {
  const Qwen25VlStreamedLanguageModel streamed =
      load_streamed(open(path()), ModelPrecision::bf16(), 2);
  const std::vector<Tensor> embeds = {streamed.embed(prompt_ids().front(), Tensor())};
  EXPECT_THROW((void)streamed.forward(embeds, positions()), InvalidInputError);
  const std::vector<std::int64_t> outside = {3, kVocab};
  EXPECT_THROW((void)streamed.embed(outside, Tensor()), InvalidInputError);
  EXPECT_THROW((void)load_streamed(open(path()), ModelPrecision::bf16(), 0), InvalidInputError);
}

}  // namespace
}  // namespace ethereal
