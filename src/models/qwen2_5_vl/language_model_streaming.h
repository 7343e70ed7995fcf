// Sequential offload of the Qwen2.5-VL language model: the decoder layers stay in the checkpoint
// and pass through the device one after another, and only the final norm stays loaded.
//
// Qwen25VlLayerSource reads float tensors from the checkpoint with pread
// (io/checkpoint_reader.h), so a file truncated while in use is an IoError naming the file and
// the tensor. NOTE: weights stored pre-quantised are still read through the mapping, where a
// truncated file raises SIGBUS instead. It reads:
//   - a decoder layer, built by the same WeightLoader code and options (format, LoRA) as a
//     resident load, so a streamed layer is bit-identical to the resident one and a quantised
//     format quantises each layer as it loads;
//   - single rows of the embedding table. A prompt needs a few hundred of its 152064 rows
//     (1.09 GB in bf16 for the 7B model), so the table is never loaded whole.
//
// Qwen25VlStreamedLanguageModel::forward runs several sequences (the conditional and the
// negative prompt) through each layer before the next, so each layer is read once per call.
// Every sequence goes through the same per-sequence code as Qwen25VlLanguageModel::forward,
// so the results are bit-identical to a resident forward of each sequence alone. The layers
// stream through a TypedBlockStreamer (runtime/residency.h) limited to one pass: with
// kept_layers = 2 a worker thread loads layer i+1 while layer i computes, and nothing is loaded
// after the last layer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "io/checkpoint_reader.h"
#include "io/safetensors_checkpoint.h"
#include "models/model_precision.h"
#include "models/qwen2_5_vl/config.h"
#include "models/qwen2_5_vl/language_model.h"
#include "models/qwen2_5_vl/layers.h"
#include "models/weight_loader.h"
#include "runtime/residency.h"

namespace ethereal {

// Group name of streamed language-model layers in residency events.
inline constexpr const char* kTextEncoderLayerGroup = "text_encoder_layer";

// Layers, final norm and embedding rows of a language model, read from its checkpoint with pread.
class Qwen25VlLayerSource {
 public:
  // Detects the checkpoint's tensor layout (tensor_names.h) and opens a CheckpointReader over
  // it; options.reader is replaced by that reader. options.lora, when set, must outlive this
  // source. Throws InvalidInputError when the embedding table is missing or is not a float
  // [vocab_size, hidden_size] tensor.
  Qwen25VlLayerSource(std::shared_ptr<const SafetensorsCheckpoint> checkpoint,
                      WeightLoadOptions options, const Qwen25VlConfig& config,
                      ModelPrecision precision);

  // Loads decoder layer `index` into memory from the current allocator (allocated, not read, in
  // a dry run). Thread-safe: concurrent loads run one after another.
  Qwen25VlDecoderLayer load_layer(std::int64_t index);
  // Loads the final norm "model.norm.weight" like load_layer.
  Tensor load_norm();
  // Starts reading layer `index`'s bytes into the page cache; does nothing in a dry run or for
  // an index outside the layers. It is noexcept because a failed hint only costs speed.
  void read_ahead(std::int64_t index) const noexcept;
  // Token embeddings as Qwen25VlLanguageModel::embed returns them, with each table row read
  // from the checkpoint and converted to the weight dtype first, as a resident load converts
  // the table. A dry run allocates the same buffers and reads nothing. Throws IoError naming
  // the file and the table when a read fails or the file ends early.
  Tensor embed(std::span<const std::int64_t> input_ids, const Tensor& image_embeddings) const;

  std::int64_t layer_count() const { return config_.text.num_hidden_layers; }
  // The largest layer tensor as stored: the read buffer of a load (see
  // BlockStreamOptions::load_workspace_bytes). NOTE: quantising while loading needs more (an
  // f32 or bf16 copy and the quantiser's buffers), which this does not count.
  std::size_t load_workspace_bytes() const { return largest_layer_tensor_bytes_; }
  const Qwen25VlConfig& config() const { return config_; }
  ModelPrecision precision() const { return precision_; }

 private:
  // A byte range of one shard, for read-ahead.
  struct Range {
    const SafetensorsFile* file = nullptr;
    std::uint64_t begin = 0;
    std::uint64_t length = 0;
  };

  std::shared_ptr<const SafetensorsCheckpoint> checkpoint_;
  Qwen25VlConfig config_;
  ModelPrecision precision_;
  std::unique_ptr<CheckpointReader> reader_;
  std::unique_ptr<WeightLoader> loader_;
  std::string embedding_file_name_;  // "model.embed_tokens.weight" as stored
  DType embedding_stored_dtype_ = DType::bf16;
  std::uint64_t embedding_begin_ = 0;             // first byte of the table in its shard
  std::vector<std::vector<Range>> layer_ranges_;  // per layer
  std::size_t largest_layer_tensor_bytes_ = 0;
  std::mutex mutex_;
};

struct Qwen25VlLayerStreamingOptions {
  // Most layers on the device at once, counting the one computing; at least 1. 2 loads the next
  // layer while one computes.
  int kept_layers = 2;
  // Loads ahead on a worker thread (never in a dry run).
  bool background = true;
  std::shared_ptr<const ResidencyObserver> observer;
};

// The language model with streamed layers: what stays on the device is the final norm.
class Qwen25VlStreamedLanguageModel {
 public:
  // Loads the final norm; the layers stay in `source`. Throws InvalidInputError for
  // kept_layers < 1.
  static Qwen25VlStreamedLanguageModel load(std::shared_ptr<Qwen25VlLayerSource> source,
                                            const Qwen25VlLayerStreamingOptions& streaming);

  // See Qwen25VlLayerSource::embed.
  Tensor embed(std::span<const std::int64_t> input_ids, const Tensor& image_embeddings) const;

  // The last hidden state [S_k, hidden] of each sequence k (inputs_embeds[k] [S_k, hidden] and
  // position_ids[k] int64 [3, S_k]), each bit-identical to Qwen25VlLanguageModel::forward of that
  // sequence alone. Loads every layer once, in order, and reports each layer's compute start
  // and end. Throws InvalidInputError for mismatched inputs, and rethrows a failed layer load
  // with its type (IoError, OutOfMemoryError).
  std::vector<Tensor> forward(std::span<const Tensor> inputs_embeds,
                              std::span<const Tensor> position_ids,
                              const Qwen25VlOptions& options = {}) const;

  const Qwen25VlConfig& config() const { return source_->config(); }

 private:
  Qwen25VlStreamedLanguageModel(std::shared_ptr<Qwen25VlLayerSource> source,
                                Qwen25VlLayerStreamingOptions streaming, Tensor norm);

  std::shared_ptr<Qwen25VlLayerSource> source_;
  Qwen25VlLayerStreamingOptions streaming_;
  Tensor norm_;  // [hidden]
};

}  // namespace ethereal
