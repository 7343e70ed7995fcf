// Edits of the tiny model under each placement: identical images, per-stage peaks within the
// placement's bound, residency events in pipeline order, prefetch overlap, and a clean stop
// when the transformer or the text encoder checkpoint is truncated while they stream.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/safetensors_checkpoint.h"
#include "models/qwen2_5_vl/config.h"
#include "models/qwen2_5_vl/language_model_streaming.h"
#include "models/qwen_image/transformer_streaming.h"
#include "models/qwen_image/transformer_tensor_names.h"
#include "models/tiny_model.h"
#include "pipeline/edit_pipeline.h"
#include "placement_test_support.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "support/files.h"
#include "support/images.h"

namespace ethereal {
namespace {

namespace fs = std::filesystem;
using placement_test::EventRecorder;
using placement_test::events_of;
using placement_test::max_on_device;

constexpr const char* kBlocks = "transformer_block";
constexpr int kSteps = 2;
constexpr int kTinyLayers = 3;  // num_layers of the tiny transformer
constexpr const char* kTextLayers = kTextEncoderLayerGroup;

EditRequest small_request() {
  EditRequest request;
  request.images = {test_support::gradient_image(48, 40, 0, 10)};
  request.prompt = "make it blue";
  request.steps = kSteps;
  request.seed = 11;
  request.cfg_scale = 4.0;  // two transformer calls per step
  request.output_size = ImageSize{48, 32};
  return request;
}

// What one load and edit under one placement did.
struct PlacementRun {
  EditResult result;
  std::vector<ResidencyEvent> events;
  std::int64_t loaded_bytes = 0;             // allocated after load, before the edit
  std::map<std::string, std::int64_t> peak;  // allocated peak per stage
  std::int64_t allocated_after = 0;
  bool prefetch_overlapped = true;
};

// Loads and edits with a fresh allocator; `dry_run` runs both against a dry-run allocator.
// With `wait_for_prefetch`, each block's compute_start waits until the next block's load has
// started (recording a failure after a timeout), so the event log shows the overlap.
PlacementRun run_placement(const fs::path& model, Placement placement, int kept_blocks,
                           bool dry_run = false, bool wait_for_prefetch = false) {
  CpuCachingAllocator allocator(CpuCachingAllocator::Options{.dry_run = dry_run});
  const ScopedAllocator scope(allocator);
  EventRecorder recorder;
  PlacementRun run;
  if (wait_for_prefetch) {
    auto computed = std::make_shared<std::int64_t>(0);
    recorder.set_hook([&recorder, &run, computed](const ResidencyEvent& event) {
      if (event.group != kBlocks || event.kind != ResidencyEventKind::compute_start) {
        return;
      }
      // Block loads start in stream order, so the load after this one is the
      // (computed + 2)-th onload_start. Nothing is loaded after the stage's last block.
      const std::int64_t expected_loads = ++*computed + 1;
      if (*computed == kSteps * 2 * kTinyLayers) {
        return;
      }
      const bool started = recorder.wait_until(
          [&](const std::vector<ResidencyEvent>& events) {
            std::int64_t loads = 0;
            for (const ResidencyEvent& seen : events) {
              loads += seen.group == kBlocks && seen.kind == ResidencyEventKind::onload_start;
            }
            return loads >= expected_loads;
          },
          std::chrono::seconds(30));
      run.prefetch_overlapped = run.prefetch_overlapped && started;
    });
  }
  PipelineLoadOptions options;
  options.placement = placement;
  options.kept_blocks = kept_blocks;
  options.on_residency_event = recorder.sink();
  const EditPipeline pipeline = EditPipeline::load(ModelDirectory::open(model), options);
  run.loaded_bytes = allocator.stats().allocated_bytes.current;
  allocator.reset_peaks();
  run.result = pipeline.run(small_request(), {}, [&](const EditProgress& progress) {
    std::int64_t& peak = run.peak[progress.stage];
    peak = std::max(peak, allocator.stats().allocated_bytes.peak);
    allocator.reset_peaks();
  });
  run.allocated_after = allocator.stats().allocated_bytes.current;
  run.events = recorder.events();
  return run;
}

std::size_t onload_bytes(const std::vector<ResidencyEvent>& events, const std::string& group) {
  std::size_t most = 0;
  for (const ResidencyEvent& event : events_of(events, group)) {
    if (event.kind == ResidencyEventKind::onload_end) {
      most = std::max(most, event.bytes);
    }
  }
  return most;
}

// Allocator bytes of one tiny-model block (the events report tensor bytes, before the
// allocator rounds each tensor up), measured by loading block 0 against a dry-run allocator.
std::int64_t block_footprint(const fs::path& model) {
  auto checkpoint = std::make_shared<const SafetensorsCheckpoint>(
      ModelDirectory::open(model).open_weights(ModelComponent::transformer));
  const QwenImageTransformerConfig config = QwenImageTransformerConfig::from_file(
      ModelDirectory::open(model).config_path(ModelComponent::transformer).value());
  CheckpointBlockSource source(checkpoint, comfy_transformer_tensor_name, {}, config,
                               ModelPrecision::bf16());
  CpuCachingAllocator dry(CpuCachingAllocator::Options{.dry_run = true});
  const ScopedAllocator scope(dry);
  const TransformerBlockWeights block = source.load(0);
  return dry.stats().allocated_bytes.current;
}

// Allocator bytes of the largest block tensor as stored: the pread staging buffer of a load.
std::int64_t largest_block_tensor(const fs::path& model) {
  const SafetensorsCheckpoint checkpoint =
      ModelDirectory::open(model).open_weights(ModelComponent::transformer);
  std::uint64_t largest = 0;
  for (const std::string& name : checkpoint.names()) {
    if (name.find("transformer_blocks.") != std::string::npos) {
      largest = std::max(largest, checkpoint.info(name).nbytes());
    }
  }
  return static_cast<std::int64_t>(CpuCachingAllocator::round_size(largest));
}

// The tiny text encoder's configuration.
Qwen25VlConfig text_encoder_config(const fs::path& model) {
  return Qwen25VlConfig::from_file(
      ModelDirectory::open(model).config_path(ModelComponent::text_encoder).value());
}

// Allocator bytes of the tiny text encoder's embedding table in bf16.
std::int64_t embedding_table_footprint(const fs::path& model) {
  const Qwen25VlConfig config = text_encoder_config(model);
  return static_cast<std::int64_t>(CpuCachingAllocator::round_size(dtype_bytes(
      DType::bf16, static_cast<std::size_t>(config.text.vocab_size * config.text.hidden_size))));
}

// Component onloads ("+group") and offloads ("-group") in event order; blocks and layers are
// left out.
std::vector<std::string> component_sequence(const std::vector<ResidencyEvent>& events) {
  std::vector<std::string> sequence;
  for (const ResidencyEvent& event : events) {
    if (event.index >= 0) {
      continue;
    }
    if (event.kind == ResidencyEventKind::onload_start) {
      sequence.push_back("+" + event.group);
    } else if (event.kind == ResidencyEventKind::offload) {
      sequence.push_back("-" + event.group);
    }
  }
  return sequence;
}

class PlacementPipelineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = test_support::create_temporary_directory("placement");
    write_tiny_model(root_ / "model", 5);
    resident_ =
        std::make_unique<PlacementRun>(run_placement(root_ / "model", Placement::resident, 2));
    model_offload_ =
        std::make_unique<PlacementRun>(run_placement(root_ / "model", Placement::model_offload, 2));
    sequential_ = std::make_unique<PlacementRun>(
        run_placement(root_ / "model", Placement::sequential_offload, 2, false, true));
    one_block_ = std::make_unique<PlacementRun>(
        run_placement(root_ / "model", Placement::sequential_offload, /*kept_blocks=*/1));
  }
  static void TearDownTestSuite() {
    resident_.reset();
    model_offload_.reset();
    sequential_.reset();
    one_block_.reset();
    fs::remove_all(root_);
  }

  // Stage working memory of the resident run: its stage peak minus the loaded weights.
  static std::int64_t resident_working(const std::string& stage) {
    return resident_->peak.at(stage) - resident_->loaded_bytes;
  }

  // Loads `model` with sequential_offload and runs an edit whose checkpoint `file` gets
  // truncated by the recorder's hook. Expects an IoError naming the file and a tensor starting
  // with `tensor_prefix`, and the allocator back at its baseline. Returns the events.
  static std::vector<ResidencyEvent> run_truncated_edit(const fs::path& model, const fs::path& file,
                                                        const std::string& tensor_prefix,
                                                        EventRecorder& recorder) {
    CpuCachingAllocator allocator;
    const ScopedAllocator scope(allocator);
    PipelineLoadOptions options;
    options.placement = Placement::sequential_offload;
    options.on_residency_event = recorder.sink();
    const EditPipeline pipeline = EditPipeline::load(ModelDirectory::open(model), options);
    const std::int64_t baseline = allocator.stats().allocated_bytes.current;
    try {
      (void)pipeline.run(small_request());
      ADD_FAILURE() << "the edit finished although " << file << " was truncated";
    } catch (const IoError& error) {
      const std::string message = error.what();
      EXPECT_NE(message.find(file.string()), std::string::npos) << message;
      EXPECT_NE(message.find(tensor_prefix), std::string::npos) << message;
    }
    EXPECT_EQ(allocator.stats().allocated_bytes.current, baseline);
    return recorder.events();
  }

  static fs::path root_;
  static std::unique_ptr<PlacementRun> resident_;
  static std::unique_ptr<PlacementRun> model_offload_;
  static std::unique_ptr<PlacementRun> sequential_;
  static std::unique_ptr<PlacementRun> one_block_;  // sequential_offload with kept_blocks 1
};

fs::path PlacementPipelineTest::root_;
std::unique_ptr<PlacementRun> PlacementPipelineTest::resident_;
std::unique_ptr<PlacementRun> PlacementPipelineTest::model_offload_;
std::unique_ptr<PlacementRun> PlacementPipelineTest::sequential_;
std::unique_ptr<PlacementRun> PlacementPipelineTest::one_block_;

TEST_F(PlacementPipelineTest, PlacementsGiveIdenticalImages) {
  EXPECT_EQ(resident_->result.image, model_offload_->result.image);
  EXPECT_EQ(resident_->result.image, sequential_->result.image);
  EXPECT_EQ(resident_->result.image, one_block_->result.image);
}

TEST_F(PlacementPipelineTest, ResidentLoadsEverythingOnce) {
  for (const ResidencyEvent& event : resident_->events) {
    EXPECT_NE(event.kind, ResidencyEventKind::offload) << event.group;
  }
  EXPECT_EQ(onload_bytes(resident_->events, "text_encoder") +
                onload_bytes(resident_->events, "transformer") +
                onload_bytes(resident_->events, "vae"),
            static_cast<std::size_t>(resident_->loaded_bytes));
}

TEST_F(PlacementPipelineTest, ModelOffloadFollowsPipelineOrder) {
  // Component onloads and offloads only, in order: each released before the next loads.
  const std::vector<std::string> sequence = component_sequence(model_offload_->events);
  const std::vector<std::string> expected = {"+text_encoder", "-text_encoder", "+vae", "-vae",
                                             "+transformer",  "-transformer",  "+vae", "-vae"};
  EXPECT_EQ(sequence, expected);
  EXPECT_EQ(model_offload_->loaded_bytes, 0);
  EXPECT_EQ(model_offload_->allocated_after, 0);
}

TEST_F(PlacementPipelineTest, ModelOffloadPeaksStayWithinBound) {
  const std::map<std::string, std::string> component_of = {{"text_encoding", "text_encoder"},
                                                           {"vae_encode", "vae"},
                                                           {"denoising", "transformer"},
                                                           {"vae_decode", "vae"}};
  for (const auto& [stage, component] : component_of) {
    const auto bound = static_cast<std::int64_t>(onload_bytes(model_offload_->events, component)) +
                       resident_working(stage);
    EXPECT_LE(model_offload_->peak.at(stage), bound) << stage;
    EXPECT_LT(model_offload_->peak.at(stage), resident_->peak.at(stage)) << stage;
  }
}

TEST_F(PlacementPipelineTest, SequentialOffloadPeakStaysWithinBound) {
  const auto top = static_cast<std::int64_t>(onload_bytes(sequential_->events, "transformer"));
  const std::int64_t block = block_footprint(root_ / "model");
  EXPECT_GE(block, static_cast<std::int64_t>(onload_bytes(sequential_->events, kBlocks)));
  const std::int64_t full =
      static_cast<std::int64_t>(onload_bytes(model_offload_->events, "transformer"));
  ASSERT_GT(block, 0);
  EXPECT_LT(top + 2 * block, full);
  const std::int64_t bound =
      top + 2 * block + resident_working("denoising") + largest_block_tensor(root_ / "model");
  EXPECT_LE(sequential_->peak.at("denoising"), bound);
  EXPECT_LT(sequential_->peak.at("denoising"), model_offload_->peak.at("denoising"));
  EXPECT_EQ(sequential_->allocated_after, 0);
}

TEST_F(PlacementPipelineTest, SequentialOffloadStreamsEveryForward) {
  const std::vector<ResidencyEvent> blocks = events_of(sequential_->events, kBlocks);
  std::vector<std::int64_t> computed;
  int onloads = 0;
  int offloads = 0;
  for (const ResidencyEvent& event : blocks) {
    if (event.kind == ResidencyEventKind::compute_start) {
      computed.push_back(event.index);
    }
    onloads += event.kind == ResidencyEventKind::onload_end;
    offloads += event.kind == ResidencyEventKind::offload;
  }
  // Every step runs both CFG branches over every block, in order.
  ASSERT_EQ(computed.size(), static_cast<std::size_t>(kSteps * 2 * kTinyLayers));
  for (std::size_t i = 0; i < computed.size(); ++i) {
    EXPECT_EQ(computed[i], static_cast<std::int64_t>(i % kTinyLayers)) << "compute " << i;
  }
  EXPECT_LE(max_on_device(sequential_->events, kBlocks), 2);
  EXPECT_EQ(onloads, offloads);
  // The stream is limited to the stage's passes, so it loads each computed block once.
  EXPECT_EQ(onloads, static_cast<int>(computed.size()));
}

// Onload of block i+1 starts before block i's compute ends, for every block of every pass
// except the stage's last, after which nothing is loaded.
TEST_F(PlacementPipelineTest, SequentialPrefetchOverlapsCompute) {
  EXPECT_TRUE(sequential_->prefetch_overlapped);
  std::vector<std::size_t> onload_starts;
  std::vector<std::size_t> compute_ends;
  for (std::size_t i = 0; i < sequential_->events.size(); ++i) {
    const ResidencyEvent& event = sequential_->events[i];
    if (event.group != kBlocks) {
      continue;
    }
    if (event.kind == ResidencyEventKind::onload_start) {
      onload_starts.push_back(i);
    } else if (event.kind == ResidencyEventKind::compute_end) {
      compute_ends.push_back(i);
    }
  }
  ASSERT_EQ(onload_starts.size(), compute_ends.size());
  for (std::size_t s = 0; s + 1 < compute_ends.size(); ++s) {
    EXPECT_LT(onload_starts[s + 1], compute_ends[s]) << "stream position " << s;
  }
}

// The vision tower is loaded and released first, then the final norm stays loaded while every
// language-model layer loads once, in order, for both prompts together.
TEST_F(PlacementPipelineTest, SequentialOffloadStreamsTextEncoderLayers) {
  const std::vector<std::string> expected = {"+text_encoder_vision",
                                             "-text_encoder_vision",
                                             "+text_encoder",
                                             "-text_encoder",
                                             "+vae",
                                             "-vae",
                                             "+transformer",
                                             "-transformer",
                                             "+vae",
                                             "-vae"};
  const std::int64_t layers = text_encoder_config(root_ / "model").text.num_hidden_layers;
  for (const PlacementRun* run : {sequential_.get(), one_block_.get()}) {
    const int kept_layers = run == sequential_.get() ? 2 : 1;
    EXPECT_EQ(component_sequence(run->events), expected) << "kept layers " << kept_layers;

    std::vector<std::int64_t> loaded;
    std::vector<std::int64_t> computed;
    std::size_t first_layer_event = run->events.size();
    std::size_t last_layer_event = 0;
    std::size_t language_model_onload = 0;
    std::size_t language_model_offload = 0;
    for (std::size_t i = 0; i < run->events.size(); ++i) {
      const ResidencyEvent& event = run->events[i];
      if (event.group == "text_encoder") {
        if (event.kind == ResidencyEventKind::onload_end) {
          language_model_onload = i;
        } else if (event.kind == ResidencyEventKind::offload) {
          language_model_offload = i;
        }
      }
      if (event.group != kTextLayers) {
        continue;
      }
      first_layer_event = std::min(first_layer_event, i);
      last_layer_event = i;
      if (event.kind == ResidencyEventKind::onload_end) {
        loaded.push_back(event.index);
      } else if (event.kind == ResidencyEventKind::compute_start) {
        computed.push_back(event.index);
      }
    }
    std::vector<std::int64_t> in_order(static_cast<std::size_t>(layers));
    for (std::int64_t i = 0; i < layers; ++i) {
      in_order[static_cast<std::size_t>(i)] = i;
    }
    EXPECT_EQ(loaded, in_order) << "kept layers " << kept_layers << ": one load per layer per edit";
    EXPECT_EQ(computed, in_order) << "kept layers " << kept_layers
                                  << ": one compute per layer per edit";
    EXPECT_LE(max_on_device(run->events, kTextLayers), kept_layers);
    EXPECT_LT(language_model_onload, first_layer_event) << "kept layers " << kept_layers;
    EXPECT_GT(language_model_offload, last_layer_event) << "kept layers " << kept_layers;
  }
}

// Text encoding under sequential_offload never allocates the embedding table, nor the vision
// tower together with the layers, so its peak is below model_offload's by at least the table.
TEST_F(PlacementPipelineTest, SequentialTextEncodingPeakStaysWithinBound) {
  const std::int64_t whole = model_offload_->peak.at("text_encoding");
  const std::int64_t table = embedding_table_footprint(root_ / "model");
  ASSERT_GT(table, 0);
  for (const PlacementRun* run : {sequential_.get(), one_block_.get()}) {
    EXPECT_LE(run->peak.at("text_encoding"), whole - table);
    EXPECT_EQ(run->allocated_after, 0);
  }
}

// The planner runs load and edit against a dry-run allocator, so each placement must run there
// with the stage peaks of the real run. Sequential offload fills ahead in a dry run, so its
// dry peak is the most the real run may reach.
TEST_F(PlacementPipelineTest, DryRunPredictsPeaks) {
  const PlacementRun dry_offload =
      run_placement(root_ / "model", Placement::model_offload, 2, /*dry_run=*/true);
  for (const auto& [stage, peak] : model_offload_->peak) {
    EXPECT_EQ(dry_offload.peak.at(stage), peak) << stage;
  }
  const PlacementRun dry_sequential =
      run_placement(root_ / "model", Placement::sequential_offload, 2, /*dry_run=*/true);
  EXPECT_GE(dry_sequential.peak.at("denoising"), sequential_->peak.at("denoising"));
  // In the tiny model the vision tower's phase sets the text-encoding peak, which does not
  // depend on how far the layer loads ran ahead, so the dry peak is exact there.
  EXPECT_EQ(dry_sequential.peak.at("text_encoding"), sequential_->peak.at("text_encoding"));
  EXPECT_EQ(max_on_device(dry_sequential.events, kBlocks), 2);
  EXPECT_EQ(max_on_device(dry_sequential.events, kTextLayers), 2);
}

// With one kept block or layer, loads run inside acquire() in the real run as in the dry run,
// so every stage's dry peak equals the real one.
TEST_F(PlacementPipelineTest, DryRunExactWithOneKeptBlock) {
  const PlacementRun dry =
      run_placement(root_ / "model", Placement::sequential_offload, 1, /*dry_run=*/true);
  ASSERT_EQ(dry.peak.size(), one_block_->peak.size());
  for (const auto& [stage, peak] : one_block_->peak) {
    EXPECT_EQ(dry.peak.at(stage), peak) << stage;
  }
}

// Truncating the transformer file while its blocks stream stops the edit with an IoError that
// names the file and a block tensor, and every byte the edit allocated is freed.
TEST_F(PlacementPipelineTest, TruncatedCheckpointStopsStreamingCleanly) {
  const fs::path copy = root_ / "truncated";
  fs::copy(root_ / "model", copy, fs::copy_options::recursive);
  const SafetensorsCheckpoint checkpoint =
      ModelDirectory::open(copy).open_weights(ModelComponent::transformer);
  const fs::path file = checkpoint.files().front().path();
  std::uint64_t first_block_byte = checkpoint.files().front().mapping().size();
  for (const std::string& name : checkpoint.names()) {
    if (name.find("transformer_blocks.") != std::string::npos) {
      first_block_byte = std::min(first_block_byte, checkpoint.info(name).data_begin);
    }
  }

  EventRecorder recorder;
  bool truncated = false;
  recorder.set_hook([&](const ResidencyEvent& event) {
    // Cut every block off once the first block computes: later loads must fail.
    if (!truncated && event.group == kBlocks && event.kind == ResidencyEventKind::compute_start) {
      fs::resize_file(file, first_block_byte);
      truncated = true;
    }
  });
  const std::vector<ResidencyEvent> events =
      run_truncated_edit(copy, file, "transformer_blocks.", recorder);
  EXPECT_TRUE(truncated);
  EXPECT_EQ(events_of(events, "transformer").back().kind, ResidencyEventKind::offload);
}

// The text encoder file is truncated once its first layer is loaded. The load of the next layer
// fails with an IoError naming the file and a layer tensor, and the edit stops before the VAE.
// Every byte the edit allocated is freed.
TEST_F(PlacementPipelineTest, TruncatedTextEncoderStopsStreamingCleanly) {
  const fs::path copy = root_ / "truncated_text_encoder";
  fs::copy(root_ / "model", copy, fs::copy_options::recursive);
  const SafetensorsCheckpoint checkpoint =
      ModelDirectory::open(copy).open_weights(ModelComponent::text_encoder);
  const fs::path file = checkpoint.files().front().path();
  std::uint64_t second_layer_byte = checkpoint.files().front().mapping().size();
  for (const std::string& name : checkpoint.names()) {
    if (name.starts_with("model.layers.1.")) {
      second_layer_byte = std::min(second_layer_byte, checkpoint.info(name).data_begin);
    }
  }

  EventRecorder recorder;
  bool truncated = false;
  recorder.set_hook([&](const ResidencyEvent& event) {
    // Runs on the loading thread before it loads the next layer.
    if (!truncated && event.group == kTextLayers && event.index == 0 &&
        event.kind == ResidencyEventKind::onload_end) {
      fs::resize_file(file, second_layer_byte);
      truncated = true;
    }
  });
  const std::vector<ResidencyEvent> events =
      run_truncated_edit(copy, file, "model.layers.1.", recorder);
  EXPECT_TRUE(truncated);
  EXPECT_EQ(events_of(events, "text_encoder").back().kind, ResidencyEventKind::offload);
  EXPECT_TRUE(events_of(events, "vae").empty());
}

TEST_F(PlacementPipelineTest, RejectsZeroKeptBlocks) {
  PipelineLoadOptions options;
  options.placement = Placement::sequential_offload;
  options.kept_blocks = 0;
  EXPECT_THROW((void)EditPipeline::load(ModelDirectory::open(root_ / "model"), options),
               InvalidInputError);
}

}  // namespace
}  // namespace ethereal
