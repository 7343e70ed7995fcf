#include "models/qwen_image/transformer_streaming.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "runtime/allocator.h"

namespace ethereal {

namespace {

constexpr std::string_view kBlockPrefix = "transformer_blocks.";

std::size_t linear_bytes(const LinearLayer& layer) {
  return layer.empty() ? 0 : layer.nbytes();
}

}  // namespace

std::size_t transformer_block_bytes(const TransformerBlockWeights& block) {
  std::size_t bytes = 0;
  for (const LinearLayer* layer :
       {&block.img_mod, &block.txt_mod, &block.to_q, &block.to_k, &block.to_v, &block.add_q_proj,
        &block.add_k_proj, &block.add_v_proj, &block.to_out, &block.to_add_out, &block.img_mlp.up,
        &block.img_mlp.down, &block.txt_mlp.up, &block.txt_mlp.down}) {
    bytes += linear_bytes(*layer);
  }
  for (const Tensor* norm :
       {&block.norm_q, &block.norm_k, &block.norm_added_q, &block.norm_added_k}) {
    bytes += norm->defined() ? norm->nbytes() : 0;
  }
  return bytes;
}

std::vector<std::vector<ShardRange>> transformer_block_ranges(
    const SafetensorsCheckpoint& checkpoint, const TensorNameMap& names, std::int64_t blocks) {
  std::vector<std::vector<ShardRange>> ranges(static_cast<std::size_t>(blocks));
  for (const std::string& file_name : checkpoint.names()) {
    const std::optional<std::string> canonical = names(file_name);
    if (!canonical) {
      continue;
    }
    const std::int64_t index = numbered_module_index(*canonical, kBlockPrefix);
    if (index < 0 || index >= blocks) {
      continue;
    }
    const TensorInfo& info = checkpoint.info(file_name);
    ranges[static_cast<std::size_t>(index)].push_back(
        {&checkpoint.file_of(file_name), info.data_begin, info.nbytes()});
  }
  return ranges;
}

CheckpointBlockSource::CheckpointBlockSource(
    std::shared_ptr<const SafetensorsCheckpoint> checkpoint, const TensorNameMap& names,
    WeightLoadOptions options, const QwenImageTransformerConfig& config, ModelPrecision precision)
    : checkpoint_(std::move(checkpoint)),
      config_(config),
      reader_(std::make_unique<CheckpointReader>(*checkpoint_)) {
  options.reader = reader_.get();
  loader_ = std::make_unique<WeightLoader>(*checkpoint_, names, "transformer", std::move(options));
  source_ = std::make_unique<CheckpointWeightSource>(*loader_, precision);
  block_ranges_ = transformer_block_ranges(*checkpoint_, names, config_.num_layers);
  for (const std::vector<ShardRange>& block : block_ranges_) {
    for (const ShardRange& range : block) {
      largest_tensor_bytes_ = std::max<std::size_t>(largest_tensor_bytes_, range.length);
    }
  }
}

TransformerBlockWeights CheckpointBlockSource::load(std::int64_t index) {
  std::lock_guard lock(mutex_);
  return build_block_weights(*source_, config_, index);
}

void CheckpointBlockSource::read_ahead(std::int64_t index) const noexcept {
  if (dry_run_active() || index < 0 || index >= config_.num_layers) {
    return;
  }
  for (const ShardRange& range : block_ranges_[static_cast<std::size_t>(index)]) {
    try {
      range.file->mapping().advise_willneed(range.begin, range.length);
    } catch (const std::exception& error) {
      spdlog::debug("read-ahead of transformer block {} in {} failed: {}", index,
                    range.file->path().string(), error.what());
    }
  }
}

TransformerBlockStream::TransformerBlockStream(std::shared_ptr<TransformerBlockSource> source,
                                               const TransformerStreamingOptions& options)
    : source_(std::move(source)), observer_(options.observer) {
  BlockStreamOptions stream_options;
  stream_options.group = kTransformerBlockGroup;
  stream_options.block_count = source_->block_count();
  stream_options.kept_blocks = options.kept_blocks;
  stream_options.background = options.background;
  stream_options.home = source_->home();
  stream_options.observer = options.observer;
  stream_options.load_workspace_bytes = source_->load_workspace_bytes();
  TransformerBlockSource* blocks = source_.get();
  const std::int64_t count = source_->block_count();
  streamer_ = std::make_unique<TypedBlockStreamer<TransformerBlockWeights>>(
      std::move(stream_options),
      [blocks, count](std::int64_t index) {
        // The disk reads the next block while this one is packed.
        blocks->read_ahead((index + 1) % count);
        return blocks->load(index);
      },
      [](const TransformerBlockWeights& block) { return transformer_block_bytes(block); });
}

TransformerBlockStream::~TransformerBlockStream() = default;

TransformerBlockStream& TransformerBlockStream::operator=(TransformerBlockStream&& other) noexcept {
  if (this != &other) {
    streamer_.reset();
    source_ = std::move(other.source_);
    observer_ = std::move(other.observer_);
    streamer_ = std::move(other.streamer_);
  }
  return *this;
}

ResidentHandle<TransformerBlockWeights> TransformerBlockStream::acquire(std::int64_t index) {
  return streamer_->acquire(index);
}

void TransformerBlockStream::limit_passes(std::int64_t passes) {
  if (passes < 1) {
    throw std::invalid_argument(
        fmt::format("transformer block stream: passes must be at least 1, got {}", passes));
  }
  if (streamer_ != nullptr) {
    streamer_->limit_acquisitions(passes * source_->block_count());
  }
}

void TransformerBlockStream::report_compute(ResidencyEventKind kind, std::int64_t index) const {
  if (observer_) {
    observer_->emit(kind, kTransformerBlockGroup, index, 0, source_->home());
  }
}

bool TransformerBlockStream::runs_in_background() const {
  return streamer_ != nullptr && streamer_->runs_in_background();
}

}  // namespace ethereal
