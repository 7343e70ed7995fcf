// A cache file of the transformer's blocks in their device format, for sequential offload.
//
// Streaming from the checkpoint rebuilds each block on every forward pass. bf16 weights are
// packed into oneDNN's blocked layout, about 0.4 s per full-width block on one core (measured
// on the machine of docs/benchmarks/placement.md). Quantising or merging a LoRA costs far
// more. The cache does that work once: each block is built with the same WeightLoader code as
// a resident load, and the finished tensors (packed weights, quantised values and scales,
// biases, norm weights) are written to a safetensors file. Streaming then reads each tensor with
// pread straight into its place, so a load is a copy from the page cache or the disk, and the block
// is bit-identical to the resident one.
//
// File: "transformer-blocks-<hash>.safetensors" in the cache directory. Every tensor is stored
// as raw bytes (U8 [nbytes]), so the writer keeps them in block order. Names are
// "<module>.<part>" with the parts packed, values, scales, nf4_absmax_codes, nf4_group_scales,
// nf4_code_map, nf4_offset and bias. Norm weights keep their own names. The metadata key
// "ethereal_cache_key" holds the text the hash was made of: the checkpoint files' absolute
// paths, sizes and modification times, the precision, the weight format and its options, the
// LoRA files' paths, sizes, times and strengths, the layer count, and the packed layout of
// every packed weight (oneDNN picks it per CPU and version). A file with the same text is
// reused; otherwise it is written anew, to a temporary that is renamed at the end.
// NOTE: files of other keys are never deleted; remove the directory to reclaim the space.
//
// Each block's layout (the dtype and shape of every part) comes from building the block
// against a dry-run allocator when the cache is opened. In a dry run the cache is planned
// only: loads allocate exactly what a real load allocates, and no file is read or written.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "io/checkpoint_reader.h"
#include "io/safetensors_checkpoint.h"
#include "models/model_precision.h"
#include "models/qwen_image/transformer_config.h"
#include "models/qwen_image/transformer_streaming.h"
#include "models/weight_loader.h"

namespace ethereal {

// When sequential offload streams from a cache file instead of the checkpoint.
enum class BlockCachePolicy : std::uint8_t {
  // When a block's device format differs from the stored weights beyond packing: a quantised
  // format made while loading, or a merged LoRA.
  automatic,
  // Always, also for bf16 or f32 weights (fastest streaming; the file is as large as the
  // blocks).
  always,
  never,
};

// "automatic", "always", "never".
std::string_view block_cache_policy_name(BlockCachePolicy policy);

// $XDG_CACHE_HOME/ethereal/cache, or ~/.cache/ethereal/cache without XDG_CACHE_HOME.
std::filesystem::path default_block_cache_directory();

// True when loading a block of `checkpoint` with `options` quantises or merges a LoRA into at
// least one of its linear weights (the automatic policy's test).
bool blocks_change_format(const SafetensorsCheckpoint& checkpoint, const TensorNameMap& names,
                          const WeightLoadOptions& options,
                          const QwenImageTransformerConfig& config);

class TransformerBlockCache final : public TransformerBlockSource {
 public:
  // Plans every block, then opens the cache file for this key under `directory`, writing it
  // first when it is missing or was written for another key (the only slow step: every block
  // is built once, with the whole thread pool). In a dry run nothing is written or opened.
  // options.lora, when set, must outlive the cache. Throws IoError when the file cannot be
  // written, for example on a full disk, and leaves no partial file. A malformed checkpoint
  // raises the errors of WeightLoader.
  static std::shared_ptr<TransformerBlockCache> open(
      std::shared_ptr<const SafetensorsCheckpoint> checkpoint, const TensorNameMap& names,
      const WeightLoadOptions& options, const QwenImageTransformerConfig& config,
      ModelPrecision precision, const std::filesystem::path& directory);

  TransformerBlockWeights load(std::int64_t index) override;
  void read_ahead(std::int64_t index) const noexcept override;
  std::int64_t block_count() const override { return config_.num_layers; }
  // Loads read every tensor into its final place, so they need no workspace.
  std::size_t load_workspace_bytes() const override { return 0; }

  // The cache file; empty in a dry run.
  const std::filesystem::path& path() const { return path_; }
  // True when open() wrote the file (false when it reused one).
  bool was_written() const { return written_; }

  // The dtype and shape one stored part has in memory.
  struct Part {
    DType dtype = DType::uint8;
    Shape shape;
  };
  // Storage form of one linear layer: packed, or quantised in `format`.
  struct LinearPlan {
    bool packed = true;
    DType packed_dtype = DType::bf16;
    quant::QuantFormat format = quant::QuantFormat::int8;
    bool has_adapter = false;  // a run-time LoRA update, attached from the LoRA set on load
  };
  struct BlockPlan {
    std::map<std::string, Part, std::less<>> parts;  // by stored name
    std::vector<std::string> order;                  // stored names in build order
    std::map<std::string, LinearPlan, std::less<>> linears;
  };

  TransformerBlockCache(std::shared_ptr<const SafetensorsCheckpoint> checkpoint,
                        const QwenImageTransformerConfig& config, ModelPrecision precision,
                        const LoraSet* lora, std::vector<BlockPlan> plans);
  ~TransformerBlockCache() override;

 private:
  class Source;

  // Builds every block and writes its parts to `path` under `key`.
  void write(const std::filesystem::path& path, const std::string& key, const TensorNameMap& names,
             const WeightLoadOptions& options);
  // Opens `path` when it was written for `key`; returns false for another key. Throws
  // InvalidInputError when a part's size differs from the plan.
  bool attach(const std::filesystem::path& path, const std::string& key);
  // Reads part `name` of the cache file into `destination` (nothing for a dry tensor).
  void read_into(const std::string& name, const Tensor& destination) const;

  std::shared_ptr<const SafetensorsCheckpoint> checkpoint_;  // the source checkpoint
  QwenImageTransformerConfig config_;
  ModelPrecision precision_;
  const LoraSet* lora_ = nullptr;
  std::vector<BlockPlan> plans_;
  std::filesystem::path path_;
  bool written_ = false;
  std::unique_ptr<SafetensorsCheckpoint> file_;  // the cache file; null in a dry run
  std::unique_ptr<CheckpointReader> reader_;
  std::vector<std::vector<ShardRange>> block_ranges_;  // per block, in the cache file
  std::mutex mutex_;
};

}  // namespace ethereal
