#include "models/qwen2_5_vl/language_model_streaming.h"

#include <algorithm>
#include <optional>
#include <string_view>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "models/qwen2_5_vl/tensor_names.h"
#include "runtime/allocator.h"
#include "runtime/dtype.h"
#include "runtime/error.h"

namespace ethereal {

namespace {

constexpr std::string_view kLayerPrefix = "model.layers.";
constexpr const char* kEmbeddingName = "model.embed_tokens.weight";

}  // namespace

Qwen25VlLayerSource::Qwen25VlLayerSource(std::shared_ptr<const SafetensorsCheckpoint> checkpoint,
                                         WeightLoadOptions options, const Qwen25VlConfig& config,
                                         ModelPrecision precision)
    : checkpoint_(std::move(checkpoint)),
      config_(config),
      precision_(precision),
      reader_(std::make_unique<CheckpointReader>(*checkpoint_)) {
  const TensorNameMap names = qwen25vl_tensor_name_map(detect_qwen25vl_layout(*checkpoint_));
  options.reader = reader_.get();
  loader_ = std::make_unique<WeightLoader>(*checkpoint_, names, "text encoder", std::move(options));

  layer_ranges_.resize(static_cast<std::size_t>(config_.text.num_hidden_layers));
  for (const std::string& file_name : checkpoint_->names()) {
    const std::optional<std::string> canonical = names(file_name);
    if (!canonical) {
      continue;
    }
    if (*canonical == kEmbeddingName) {
      embedding_file_name_ = file_name;
      continue;
    }
    const std::int64_t index = numbered_module_index(*canonical, kLayerPrefix);
    if (index < 0 || index >= config_.text.num_hidden_layers) {
      continue;
    }
    const TensorInfo& info = checkpoint_->info(file_name);
    layer_ranges_[static_cast<std::size_t>(index)].push_back(
        {&checkpoint_->file_of(file_name), info.data_begin, info.nbytes()});
    largest_layer_tensor_bytes_ = std::max<std::size_t>(largest_layer_tensor_bytes_, info.nbytes());
  }

  // The table is read row by row, so its header is checked here as WeightLoader::take would.
  const TensorInfo& table = loader_->info(kEmbeddingName);
  const Shape expected = {config_.text.vocab_size, config_.text.hidden_size};
  const std::string path = checkpoint_->file_of(embedding_file_name_).path().string();
  if (table.shape != expected) {
    throw InvalidInputError(
        fmt::format("{}: tensor \"{}\" has shape {} but the text encoder configuration expects {}",
                    path, embedding_file_name_, shape_str(table.shape), shape_str(expected)));
  }
  if (!table.dtype || !dtype_is_float(*table.dtype)) {
    throw InvalidInputError(fmt::format("{}: tensor \"{}\" has dtype {}; a float dtype is expected",
                                        path, embedding_file_name_, table.stored_dtype));
  }
  embedding_stored_dtype_ = *table.dtype;
  embedding_begin_ = table.data_begin;
}

Qwen25VlDecoderLayer Qwen25VlLayerSource::load_layer(std::int64_t index) {
  std::lock_guard lock(mutex_);
  return Qwen25VlDecoderLayer::load(*loader_, fmt::format("model.layers.{}", index), config_.text,
                                    precision_);
}

Tensor Qwen25VlLayerSource::load_norm() {
  std::lock_guard lock(mutex_);
  return loader_->take("model.norm.weight", {config_.text.hidden_size}, precision_.weight_dtype);
}

void Qwen25VlLayerSource::read_ahead(std::int64_t index) const noexcept {
  if (dry_run_active() || index < 0 || index >= config_.text.num_hidden_layers) {
    return;
  }
  for (const Range& range : layer_ranges_[static_cast<std::size_t>(index)]) {
    try {
      range.file->mapping().advise_willneed(range.begin, range.length);
    } catch (const std::exception& error) {
      spdlog::debug("read-ahead of text encoder layer {} in {} failed: {}", index,
                    range.file->path().string(), error.what());
    }
  }
}

Tensor Qwen25VlLayerSource::embed(std::span<const std::int64_t> input_ids,
                                  const Tensor& image_embeddings) const {
  const std::int64_t hidden = config_.text.hidden_size;
  const DType weight_dtype = precision_.weight_dtype;
  // One row as stored and, when the dtypes differ, the same row in the weight dtype: a resident
  // load converts the whole table to the weight dtype, and the result must match it.
  const Tensor stored_row = Tensor::empty({hidden}, embedding_stored_dtype_);
  const Tensor weight_row =
      embedding_stored_dtype_ == weight_dtype ? stored_row : Tensor::empty({hidden}, weight_dtype);
  const std::uint64_t row_bytes = stored_row.nbytes();
  return qwen25vl_token_embeddings(
      config_, precision_.compute_dtype, input_ids, image_embeddings, weight_dtype,
      [&](std::int64_t id) -> const void* {
        reader_->read_bytes(embedding_file_name_,
                            embedding_begin_ + static_cast<std::uint64_t>(id) * row_bytes,
                            row_bytes, stored_row.data());
        if (weight_row.data() != stored_row.data()) {
          convert_elements(stored_row.data(), embedding_stored_dtype_, weight_row.data(),
                           weight_dtype, static_cast<std::size_t>(hidden));
        }
        return weight_row.data();
      });
}

Qwen25VlStreamedLanguageModel::Qwen25VlStreamedLanguageModel(
    std::shared_ptr<Qwen25VlLayerSource> source, Qwen25VlLayerStreamingOptions streaming,
    Tensor norm)
    : source_(std::move(source)), streaming_(std::move(streaming)), norm_(std::move(norm)) {}

Qwen25VlStreamedLanguageModel Qwen25VlStreamedLanguageModel::load(
    std::shared_ptr<Qwen25VlLayerSource> source, const Qwen25VlLayerStreamingOptions& streaming) {
  if (streaming.kept_layers < 1) {
    throw InvalidInputError(fmt::format(
        "kept_layers must be at least 1 (the layer that computes), got {}", streaming.kept_layers));
  }
  Tensor norm = source->load_norm();
  return Qwen25VlStreamedLanguageModel(std::move(source), streaming, std::move(norm));
}

Tensor Qwen25VlStreamedLanguageModel::embed(std::span<const std::int64_t> input_ids,
                                            const Tensor& image_embeddings) const {
  return source_->embed(input_ids, image_embeddings);
}

std::vector<Tensor> Qwen25VlStreamedLanguageModel::forward(std::span<const Tensor> inputs_embeds,
                                                           std::span<const Tensor> position_ids,
                                                           const Qwen25VlOptions& options) const {
  if (inputs_embeds.size() != position_ids.size()) {
    throw InvalidInputError(
        fmt::format("language model: {} inputs_embeds but {} position_ids; each sequence needs "
                    "both",
                    inputs_embeds.size(), position_ids.size()));
  }
  if (inputs_embeds.empty()) {
    return {};
  }
  const Qwen25VlTextConfig& text = config().text;
  const DType compute_dtype = source_->precision().compute_dtype;
  std::vector<Qwen25VlTextSequence> sequences;
  sequences.reserve(inputs_embeds.size());
  for (std::size_t k = 0; k < inputs_embeds.size(); ++k) {
    sequences.push_back(
        Qwen25VlTextSequence::begin(inputs_embeds[k], position_ids[k], text, compute_dtype));
  }

  BlockStreamOptions stream_options;
  stream_options.group = kTextEncoderLayerGroup;
  stream_options.block_count = source_->layer_count();
  stream_options.kept_blocks = streaming_.kept_layers;
  stream_options.background = streaming_.background;
  stream_options.home = MemoryTier::storage;
  stream_options.observer = streaming_.observer;
  stream_options.load_workspace_bytes = source_->load_workspace_bytes();
  Qwen25VlLayerSource* layers = source_.get();
  TypedBlockStreamer<Qwen25VlDecoderLayer> streamer(
      std::move(stream_options),
      [layers](std::int64_t index) {
        // The disk reads the next layer while this one is packed.
        layers->read_ahead(index + 1);
        return layers->load_layer(index);
      },
      [](const Qwen25VlDecoderLayer& layer) { return decoder_layer_bytes(layer); });
  // One pass: the worker loads nothing after the last layer.
  streamer.limit_acquisitions(source_->layer_count());

  const ResidencyObserver* observer = streaming_.observer.get();
  for (std::int64_t index = 0; index < source_->layer_count(); ++index) {
    const ResidentHandle<Qwen25VlDecoderLayer> layer = streamer.acquire(index);
    if (observer != nullptr) {
      observer->emit(ResidencyEventKind::compute_start, kTextEncoderLayerGroup, index, 0,
                     MemoryTier::storage);
    }
    for (Qwen25VlTextSequence& sequence : sequences) {
      layer->forward_(sequence.hidden, sequence.rope, text, options);
    }
    if (observer != nullptr) {
      observer->emit(ResidencyEventKind::compute_end, kTextEncoderLayerGroup, index, 0,
                     MemoryTier::storage);
    }
  }

  std::vector<Tensor> outputs;
  outputs.reserve(sequences.size());
  for (Qwen25VlTextSequence& sequence : sequences) {
    outputs.push_back(sequence.finish(norm_, text));
  }
  return outputs;
}

}  // namespace ethereal
