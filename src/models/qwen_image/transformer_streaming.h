// Sequential offload of the Qwen-Image transformer: the blocks stay in their home tier and
// pass through the device one after another while the top-level weights stay loaded.
//
// A TransformerBlockSource loads one block into memory from the current allocator:
//   - CheckpointBlockSource reads the block's tensors from the checkpoint with pread
//     (io/checkpoint_reader.h) and builds them with the same WeightLoader code as a resident
//     load, so a streamed block is bit-identical to the resident one: bf16 or f32 weights are
//     packed from the file, quantised formats are quantised from it, LoRAs are merged.
//   - TransformerBlockCache (transformer_block_cache.h) reads blocks already in their device
//     format from a cache file, for formats that differ from the checkpoint's.
//
// A TransformerBlockStream is one series of forward passes (a denoising stage, or a single
// forward call). It hands out the blocks in order 0, 1, ..., N-1, 0, ... through a
// BlockStreamer (runtime/residency.h): with kept_blocks = 2, a worker thread loads block i+1
// while block i computes, and the last block of one pass overlaps the first of the next. A
// stream limited to its passes (limit_passes) loads nothing after the last block of the last
// pass.
// When a block's load starts, the source advises the kernel to read the next block's byte
// ranges (MADV_WILLNEED), so a cold file is read from disk while the worker packs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "io/checkpoint_reader.h"
#include "io/safetensors_checkpoint.h"
#include "models/model_precision.h"
#include "models/qwen_image/transformer_config.h"
#include "models/qwen_image/transformer_weights.h"
#include "models/weight_loader.h"
#include "runtime/residency.h"

namespace ethereal {

// Group name of transformer blocks in residency events.
inline constexpr const char* kTransformerBlockGroup = "transformer_block";

// Device bytes of one block: packed or quantised weights, biases, adapters and norm weights.
std::size_t transformer_block_bytes(const TransformerBlockWeights& block);

class TransformerBlockSource {
 public:
  virtual ~TransformerBlockSource() = default;
  // Loads block `index` into memory from the current allocator (allocated, not read, in a dry
  // run). Thread-safe: concurrent calls run one after another.
  virtual TransformerBlockWeights load(std::int64_t index) = 0;
  // Starts reading block `index`'s bytes into the page cache; does nothing in a dry run.
  // Never throws: a failed hint only costs speed.
  virtual void read_ahead(std::int64_t index) const noexcept = 0;
  virtual std::int64_t block_count() const = 0;
  // Most bytes one load allocates besides the block (its read buffer); see
  // BlockStreamOptions::load_workspace_bytes.
  virtual std::size_t load_workspace_bytes() const = 0;
  // Where the blocks live while they are not loaded.
  virtual MemoryTier home() const { return MemoryTier::storage; }
};

// A byte range of one shard, for read-ahead.
struct ShardRange {
  const SafetensorsFile* file = nullptr;
  std::uint64_t begin = 0;
  std::uint64_t length = 0;
};

// Blocks read from the checkpoint with pread and built by a WeightLoader with `options`
// (format, LoRA), exactly as a resident load builds them.
class CheckpointBlockSource final : public TransformerBlockSource {
 public:
  // `names` maps the checkpoint's tensor names to the diffusers names. Opens a
  // CheckpointReader over `checkpoint`; options.reader is replaced by it. options.lora, when
  // set, must outlive this source.
  CheckpointBlockSource(std::shared_ptr<const SafetensorsCheckpoint> checkpoint,
                        const TensorNameMap& names, WeightLoadOptions options,
                        const QwenImageTransformerConfig& config, ModelPrecision precision);

  TransformerBlockWeights load(std::int64_t index) override;
  void read_ahead(std::int64_t index) const noexcept override;
  std::int64_t block_count() const override { return config_.num_layers; }
  // The largest block tensor as stored, read before it is packed. NOTE: quantising or merging
  // a LoRA while streaming needs more (an f32 copy and the quantiser's buffers), which this
  // does not count. A transformer block cache avoids both.
  std::size_t load_workspace_bytes() const override { return largest_tensor_bytes_; }

 private:
  std::shared_ptr<const SafetensorsCheckpoint> checkpoint_;
  QwenImageTransformerConfig config_;
  std::unique_ptr<CheckpointReader> reader_;
  std::unique_ptr<WeightLoader> loader_;
  std::unique_ptr<CheckpointWeightSource> source_;
  std::vector<std::vector<ShardRange>> block_ranges_;  // per block, in file order
  std::size_t largest_tensor_bytes_ = 0;
  std::mutex mutex_;
};

// Byte ranges of each block's tensors in `checkpoint` (index = block), found through `names`.
std::vector<std::vector<ShardRange>> transformer_block_ranges(
    const SafetensorsCheckpoint& checkpoint, const TensorNameMap& names, std::int64_t blocks);

struct TransformerStreamingOptions {
  // Most blocks on the device at once, counting the one computing; at least 1. 2 loads the
  // next block while one computes.
  int kept_blocks = 2;
  // Loads ahead on a worker thread (never in a dry run).
  bool background = true;
  std::shared_ptr<const ResidencyObserver> observer;
};

// One series of forward passes over the streamed blocks; see the note at the top of this file.
// Move-only. A default-constructed stream is empty (resident blocks need none).
class TransformerBlockStream {
 public:
  TransformerBlockStream() = default;
  TransformerBlockStream(std::shared_ptr<TransformerBlockSource> source,
                         const TransformerStreamingOptions& options);
  TransformerBlockStream(TransformerBlockStream&&) noexcept = default;
  // Closes this stream (joining its worker) before taking over `other`'s.
  TransformerBlockStream& operator=(TransformerBlockStream&& other) noexcept;
  ~TransformerBlockStream();

  bool empty() const { return streamer_ == nullptr; }
  // The next block, which must be `index` (blocks stream in order); rethrows a failed load.
  ResidentHandle<TransformerBlockWeights> acquire(std::int64_t index);
  // Ends the stream after `passes` passes over the blocks, so the worker loads no block past the
  // last pass. Call it before the first acquire(); does nothing on an empty stream. Throws
  // std::invalid_argument for passes < 1.
  void limit_passes(std::int64_t passes);
  // Reports the start or end of block `index`'s computation.
  void report_compute(ResidencyEventKind kind, std::int64_t index) const;
  bool runs_in_background() const;

 private:
  std::shared_ptr<TransformerBlockSource> source_;
  std::shared_ptr<const ResidencyObserver> observer_;
  // Declared last, so it is destroyed (and its worker joined) before the source it reads.
  std::unique_ptr<TypedBlockStreamer<TransformerBlockWeights>> streamer_;
};

}  // namespace ethereal
