// The Qwen2.5-VL vision tower (transformers Qwen2_5_VisionTransformerPretrainedModel): image
// patches in, one language-model-width vector per 2 x 2 patch group out.
//
// Forward pass for the patches of all images at once (attention never crosses images):
//   1. patch embedding: the Conv3d (kernel = stride = (2, 14, 14), no bias) applied to rows of
//      channels x frames x 14 x 14 values is a linear layer on each row, so its 5-D weight is
//      loaded as [hidden, in_channels x frames x patch x patch];
//   2. the rows are reordered window by window (positions.h), in groups of merge x merge
//      patches, and so are the 2-D RoPE tables;
//   3. blocks: x += proj(attention(rope(q), rope(k), v)) on RMSNorm(x), with q | k | v from one
//      fused linear layer, attention inside each window (or inside each image frame for the
//      full-attention blocks); then x += MLP(RMSNorm(x));
//   4. merger: RMSNorm per patch, each group of merge x merge consecutive patches becomes one
//      row of 4 x hidden values, Linear, exact GELU, Linear to out_hidden_size;
//   5. the window order is undone, so rows follow the processor's order, image by image.
// RMSNorm epsilon is 1e-6 throughout, fixed in transformers rather than read from the config.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "models/linear_layer.h"
#include "models/model_precision.h"
#include "models/qwen2_5_vl/config.h"
#include "models/qwen2_5_vl/layers.h"
#include "models/qwen2_5_vl/positions.h"
#include "models/weight_loader.h"
#include "runtime/tensor.h"

namespace ethereal {

struct Qwen25VlVisionBlock {
  Tensor norm1;      // [hidden]
  LinearLayer qkv;   // hidden -> 3 x hidden, output q | k | v, each heads x head_dim
  LinearLayer proj;  // hidden -> hidden
  Tensor norm2;      // [hidden]
  Qwen25VlMlp mlp;   // with biases
  bool full_attention = false;

  // Loads "<prefix>.norm1", "<prefix>.attn.qkv", ... ("<prefix>" = "visual.blocks.N").
  static Qwen25VlVisionBlock load(WeightLoader& loader, const std::string& prefix,
                                  const Qwen25VlVisionConfig& config, std::int64_t index,
                                  ModelPrecision precision);

  // Updates x [N, hidden] (windowed order) in place. `window_starts` and `frame_starts` are the
  // segment starts of the windows and of the image frames (cu_*seqlens without the total).
  void forward_(Tensor& x, const Qwen25VlRopeTables& rope, std::int64_t heads,
                const std::vector<std::int64_t>& window_starts,
                const std::vector<std::int64_t>& frame_starts,
                const Qwen25VlOptions& options) const;
};

class Qwen25VlVisionTower {
 public:
  // Loads every "visual.*" tensor. Linear and norm weights are kept in precision.weight_dtype.
  static Qwen25VlVisionTower load(WeightLoader& loader, const Qwen25VlVisionConfig& config,
                                  ModelPrecision precision);

  // pixel_rows [N_patches, patch_values()] (f32 or bf16, processor row order, the images one
  // after another) -> [N_patches / merge_unit(), out_hidden_size] in the compute dtype,
  // image by image in processor order. Throws InvalidInputError when the rows do not match
  // the grids.
  Tensor forward(const Tensor& pixel_rows, std::span<const ImageGrid> grids,
                 const Qwen25VlOptions& options = {}) const;

  const Qwen25VlVisionConfig& config() const { return config_; }

 private:
  Qwen25VlVisionTower(Qwen25VlVisionConfig config, ModelPrecision precision,
                      LinearLayer patch_embed, std::vector<Qwen25VlVisionBlock> blocks,
                      Tensor merger_norm, LinearLayer merger_fc1, LinearLayer merger_fc2);

  Tensor merge_patches(const Tensor& x) const;

  Qwen25VlVisionConfig config_;
  ModelPrecision precision_;
  LinearLayer patch_embed_;  // [hidden, patch_values()]
  std::vector<Qwen25VlVisionBlock> blocks_;
  Tensor merger_norm_;      // ln_q [hidden]
  LinearLayer merger_fc1_;  // merge_unit x hidden -> merge_unit x hidden
  LinearLayer merger_fc2_;  // merge_unit x hidden -> out_hidden_size
};

}  // namespace ethereal
