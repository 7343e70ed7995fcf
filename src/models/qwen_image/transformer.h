// The Qwen-Image diffusion transformer (diffusers QwenImageTransformer2DModel): a 60-block
// dual-stream MMDiT that predicts the flow-matching velocity of the packed latent tokens.
//
// Forward pass for one sample (diffusers semantics; D = heads x head_dim):
//   x    = img_in(hidden_states)                                    [S_img, D]
//   c    = txt_in(RMSNorm(encoder_hidden_states; txt_norm))          [S_txt, D]
//   temb = linear_2(SiLU(linear_1(sinusoid(sigma))))                 [R, D]
//          (R = 2 with zero_cond_t: rows for sigma and for 0)
//   RoPE tables from img_shapes and S_txt (transformer_rope.h)
//   blocks (transformer_block.h), then
//   out  = proj_out(LN(x) (1 + scale) + shift), (scale, shift) = norm_out.linear(SiLU(temb_0))
//          (note the order: the output head is (scale, shift), the blocks (shift, scale, gate))
// The output covers all image tokens, references included; the pipeline keeps the target's.
//
// Batch: one sample per call. Inputs may carry a leading batch axis of size 1, and the output
// then has one too. The edit pipeline needs no more, because CFG runs its two branches as two
// calls (their text lengths may differ).
//
// Dry run: the forward pass reads no tensor data to decide anything (sigma and img_shapes are
// plain values), so in a dry run it performs the same allocations in the same order as a real
// run and computes nothing.
//
// Placement: the blocks are either loaded with the model (load, random) or streamed during
// every forward call (load_streamed, the sequential_offload placement, described in
// transformer_streaming.h). Both run the same block code on bit-identical weights.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "io/safetensors_checkpoint.h"
#include "models/model_precision.h"
#include "models/qwen_image/transformer_config.h"
#include "models/qwen_image/transformer_rope.h"
#include "models/qwen_image/transformer_streaming.h"
#include "models/qwen_image/transformer_weights.h"
#include "models/weight_loader.h"
#include "runtime/tensor.h"

namespace ethereal {

struct BlockContext;

struct TransformerInputs {
  // [S_img, in_channels] or [1, S_img, in_channels], f32 or bf16: the target's tokens first,
  // then each reference image's, in img_shapes order.
  Tensor hidden_states;
  // [S_txt, joint_attention_dim] or [1, S_txt, joint_attention_dim], f32 or bf16; S_txt >= 1.
  Tensor encoder_hidden_states;
  // Optional [S_txt] or [1, S_txt] of uint8, int32 or int64: text tokens with 0 are padding,
  // ignored as attention keys. Undefined means every text token is valid.
  Tensor text_mask;
  // The noise level in [0, 1]: the scheduler's timestep / 1000. A bf16 model rounds it to bf16
  // before embedding it, as diffusers does (see model_sigma in transformer_timestep.h).
  double sigma = 1.0;
  // Token grids in patches: the target first, then each reference. Their token counts must
  // add up to S_img.
  std::vector<PatchGrid> img_shapes;
};

// Working-memory options; they change peak memory and speed, never the result beyond
// rounding.
struct TransformerForwardOptions {
  // Maximum query rows per attention work item (cpu::AttentionOptions::max_query_tile); 0
  // selects the kernel's default.
  std::int64_t attention_query_tile = 0;
  // Maximum tokens per MLP pass, which bounds the [tokens, 4D] hidden tensor. 0 processes each
  // stream at once.
  std::int64_t mlp_token_chunk = 0;
  // The stream that supplies streamed blocks across several forward calls (see
  // QwenImageTransformer::open_block_stream); null opens one for this call only. Ignored when
  // the blocks are loaded with the model.
  TransformerBlockStream* block_stream = nullptr;
};

class QwenImageTransformer {
 public:
  // Builds the model from `source`, requesting the top-level weights first, then block 0, 1,
  // ... Throws InvalidInputError for an invalid config or precision.
  QwenImageTransformer(const QwenImageTransformerConfig& config, ModelPrecision precision,
                       TransformerWeightSource& source);

  // Loads all weights of `checkpoint`, whose tensor names `names` maps to the diffusers names.
  // Missing tensors, wrong shapes and tensors the configuration has no place for are
  // InvalidInputError naming the file and the tensor. The unexpected-tensor check runs after
  // the weights are read. `options` selects the linear weight format and the LoRA.
  static QwenImageTransformer load(const SafetensorsCheckpoint& checkpoint,
                                   const QwenImageTransformerConfig& config,
                                   ModelPrecision precision,
                                   const TensorNameMap& names = identity_tensor_name,
                                   const WeightLoadOptions& options = {});
  // Loads the top-level weights of `checkpoint` (with pread) and leaves the blocks in their home
  // tier: forward() streams them through memory, at most streaming.kept_blocks at a time (the
  // sequential_offload placement). `blocks` supplies them, by default a CheckpointBlockSource
  // over `checkpoint`; a TransformerBlockCache reads them from a cache file instead. The
  // checkpoint stays open while the model lives. Block tensors read from the checkpoint are
  // checked when they are first streamed; load() once in a dry run to check them all up
  // front. options.lora, when set, must outlive the model.
  static QwenImageTransformer load_streamed(
      std::shared_ptr<const SafetensorsCheckpoint> checkpoint,
      const QwenImageTransformerConfig& config, ModelPrecision precision,
      const TensorNameMap& names, const WeightLoadOptions& options,
      const TransformerStreamingOptions& streaming,
      std::shared_ptr<TransformerBlockSource> blocks = nullptr);
  // A model with seeded random weights (see RandomWeightSource), for benchmarks and tests.
  static QwenImageTransformer random(const QwenImageTransformerConfig& config,
                                     ModelPrecision precision, std::uint64_t seed);

  // Returns the velocity [S_img, patch^2 x out_channels] (with a leading 1 when the inputs have
  // a batch axis) in the compute dtype. Throws InvalidInputError for inconsistent inputs, and
  // with streamed blocks the errors of their loading (IoError for a failed read).
  // A model with streamed blocks runs one forward call at a time.
  Tensor forward(const TransformerInputs& inputs,
                 const TransformerForwardOptions& options = {}) const;

  // temb [R, D] in the compute dtype (before the SiLU its consumers apply): row 0 embeds
  // sigma, and with zero_cond_t row 1 embeds 0. Throws InvalidInputError for sigma outside
  // [0, 1].
  Tensor timestep_embedding(double sigma) const;

  // True when forward() streams the blocks (load_streamed).
  bool streams_blocks() const { return block_source_ != nullptr; }
  // A stream over the blocks for a series of forward calls, such as the steps of one
  // denoising stage: pass it in TransformerForwardOptions::block_stream, so the first block of
  // each call loads while the previous call ends. Destroying it releases the blocks loaded
  // ahead. Empty when the blocks are loaded with the model.
  TransformerBlockStream open_block_stream() const;

  const QwenImageTransformerConfig& config() const { return config_; }
  ModelPrecision precision() const { return precision_; }

 private:
  // Takes the image stream [S_img, D] after the blocks (released once normalised) and returns
  // [S_img, patch^2 x out_channels].
  Tensor output_head(Tensor img, const Tensor& modulation) const;

  QwenImageTransformer(const QwenImageTransformerConfig& config, ModelPrecision precision,
                       TransformerTopWeights top, std::shared_ptr<TransformerBlockSource> blocks,
                       const TransformerStreamingOptions& streaming);

  // Runs every block on the two streams, loaded or streamed.
  void run_blocks(const BlockContext& context, const TransformerForwardOptions& options,
                  Tensor& img, Tensor& txt) const;

  QwenImageTransformerConfig config_;
  ModelPrecision precision_;
  TransformerTopWeights top_;
  std::vector<TransformerBlockWeights> blocks_;  // empty when streamed
  std::shared_ptr<TransformerBlockSource> block_source_;
  TransformerStreamingOptions streaming_;
};

}  // namespace ethereal
