#include "models/qwen2_5_vl/vision_tower.h"

#include <optional>

#include <fmt/format.h>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/rope.h"
#include "runtime/error.h"

namespace ethereal {

namespace {

constexpr float kVisionNormEps = 1e-6f;

// transformers' Qwen2RMSNorm rounds the normalised value to the activation dtype before the
// weight multiplies it; with f32 activations there is nothing to round.
cpu::RmsNormOptions vision_norm_options(DType compute) {
  return {kVisionNormEps, compute == DType::bf16};
}

std::vector<std::int64_t> without_total(const std::vector<std::int64_t>& cu_seqlens) {
  return {cu_seqlens.begin(), cu_seqlens.end() - 1};
}

std::vector<std::int64_t> inverse_permutation(const std::vector<std::int64_t>& order) {
  std::vector<std::int64_t> inverse(order.size());
  for (std::size_t i = 0; i < order.size(); ++i) {
    inverse[static_cast<std::size_t>(order[i])] = static_cast<std::int64_t>(i);
  }
  return inverse;
}

}  // namespace

Qwen25VlVisionBlock Qwen25VlVisionBlock::load(WeightLoader& loader, const std::string& prefix,
                                              const Qwen25VlVisionConfig& config,
                                              std::int64_t index, ModelPrecision precision) {
  const std::int64_t hidden = config.hidden_size;
  const DType dtype = precision.weight_dtype;
  return Qwen25VlVisionBlock{
      loader.take(prefix + ".norm1.weight", {hidden}, dtype),
      loader.linear(prefix + ".attn.qkv", 3 * hidden, hidden, true, dtype),
      loader.linear(prefix + ".attn.proj", hidden, hidden, true, dtype),
      loader.take(prefix + ".norm2.weight", {hidden}, dtype),
      Qwen25VlMlp::load(loader, prefix + ".mlp", hidden, config.intermediate_size, true,
                        config.hidden_act, dtype),
      config.is_full_attention_block(index),
  };
}

void Qwen25VlVisionBlock::forward_(Tensor& x, const Qwen25VlRopeTables& rope, std::int64_t heads,
                                   const std::vector<std::int64_t>& window_starts,
                                   const std::vector<std::int64_t>& frame_starts,
                                   const Qwen25VlOptions& options) const {
  const std::int64_t patches = x.size(0);
  const std::int64_t hidden = x.size(1);
  const cpu::RmsNormOptions norm_options = vision_norm_options(x.dtype());
  Tensor attended;  // [N, heads, head_dim]
  {
    Tensor qkv_rows;
    {
      const Tensor normed = cpu::rms_norm(x, norm1, norm_options);  // [N, hidden]
      qkv_rows = qkv.forward(normed);                               // [N, 3 x hidden]
    }
    const Tensor qkv_heads = qkv_rows.view({patches, 3, heads, hidden / heads});
    Tensor q = qkv_heads.select(1, 0);  // [N, heads, head_dim], strided views
    Tensor k = qkv_heads.select(1, 1);
    const Tensor v = qkv_heads.select(1, 2);
    cpu::apply_rope_(q, rope.cos, rope.sin, cpu::RopeStyle::rotate_half);
    cpu::apply_rope_(k, rope.cos, rope.sin, cpu::RopeStyle::rotate_half);

    cpu::AttentionOptions attention_options;
    attention_options.segment_starts = full_attention ? frame_starts : window_starts;
    attention_options.max_query_tile = options.attention_query_tile;
    attention_options.precision = options.attention_precision;
    attended = cpu::attention(q, k, v, attention_options);
  }
  cpu::add_(x, proj.forward(attended.view({patches, hidden})));  // [N, hidden]
  attended = Tensor();

  const Tensor normed = cpu::rms_norm(x, norm2, norm_options);  // [N, hidden]
  cpu::add_(x, mlp.forward(normed));
}

Qwen25VlVisionTower::Qwen25VlVisionTower(Qwen25VlVisionConfig config, ModelPrecision precision,
                                         LinearLayer patch_embed,
                                         std::vector<Qwen25VlVisionBlock> blocks,
                                         Tensor merger_norm, LinearLayer merger_fc1,
                                         LinearLayer merger_fc2)
    : config_(std::move(config)),
      precision_(precision),
      patch_embed_(std::move(patch_embed)),
      blocks_(std::move(blocks)),
      merger_norm_(std::move(merger_norm)),
      merger_fc1_(std::move(merger_fc1)),
      merger_fc2_(std::move(merger_fc2)) {}

Qwen25VlVisionTower Qwen25VlVisionTower::load(WeightLoader& loader,
                                              const Qwen25VlVisionConfig& config,
                                              ModelPrecision precision) {
  const DType dtype = precision.weight_dtype;
  const std::int64_t hidden = config.hidden_size;
  std::optional<LinearLayer> patch_embed;
  {
    // Conv3d weight [hidden, channels, frames, patch, patch] = a [hidden, patch_values] matrix.
    const Tensor conv_weight = loader.take("visual.patch_embed.proj.weight",
                                           {hidden, config.in_channels, config.temporal_patch_size,
                                            config.patch_size, config.patch_size},
                                           dtype);
    patch_embed.emplace(
        cpu::PackedLinear(conv_weight.view({hidden, config.patch_values()}), Tensor(), dtype));
  }

  std::vector<Qwen25VlVisionBlock> blocks;
  blocks.reserve(static_cast<std::size_t>(config.depth));
  for (std::int64_t index = 0; index < config.depth; ++index) {
    blocks.push_back(Qwen25VlVisionBlock::load(loader, fmt::format("visual.blocks.{}", index),
                                               config, index, precision));
  }

  const std::int64_t merged = config.merge_unit() * hidden;
  Tensor merger_norm = loader.take("visual.merger.ln_q.weight", {hidden}, dtype);
  LinearLayer merger_fc1 = loader.linear("visual.merger.mlp.0", merged, merged, true, dtype);
  LinearLayer merger_fc2 =
      loader.linear("visual.merger.mlp.2", config.out_hidden_size, merged, true, dtype);
  return Qwen25VlVisionTower(config, precision, std::move(*patch_embed), std::move(blocks),
                             std::move(merger_norm), std::move(merger_fc1), std::move(merger_fc2));
}

Tensor Qwen25VlVisionTower::forward(const Tensor& pixel_rows, std::span<const ImageGrid> grids,
                                    const Qwen25VlOptions& options) const {
  const VisionWindowLayout layout = vision_window_layout(grids, config_);
  if (pixel_rows.dim() != 2 || pixel_rows.size(0) != layout.patch_count() ||
      pixel_rows.size(1) != config_.patch_values()) {
    throw InvalidInputError(
        fmt::format("vision tower: pixel rows are {} but the image grids need [{}, {}] (patches x "
                    "channels x frames x patch x patch)",
                    pixel_rows.describe(), layout.patch_count(), config_.patch_values()));
  }
  const std::int64_t unit = config_.merge_unit();
  const DType compute = precision_.compute_dtype;

  Tensor x;
  {
    const Tensor embedded = patch_embed_.forward(pixel_rows, compute);  // [N, hidden]
    x = gather_row_units(embedded, layout.window_index, unit);          // windowed order
  }
  const Qwen25VlRopeTables rope = vision_rope_tables(grids, layout, config_);  // [N, head_dim / 2]
  const std::vector<std::int64_t> window_starts = without_total(layout.cu_window_seqlens);
  const std::vector<std::int64_t> frame_starts = without_total(layout.cu_seqlens);
  for (const Qwen25VlVisionBlock& block : blocks_) {
    block.forward_(x, rope, config_.num_heads, window_starts, frame_starts, options);
  }

  const Tensor merged = merge_patches(x);  // [N / unit, out_hidden], windowed order
  x = Tensor();
  return gather_row_units(merged, inverse_permutation(layout.window_index), 1);
}

Tensor Qwen25VlVisionTower::merge_patches(const Tensor& x) const {
  const std::int64_t groups = x.size(0) / config_.merge_unit();
  Tensor hidden;
  {
    const Tensor normed =
        cpu::rms_norm(x, merger_norm_, vision_norm_options(x.dtype()));  // [N, hidden]
    hidden = merger_fc1_.forward(normed.view({groups, -1}));  // [N / unit, unit x hidden]
  }
  cpu::gelu_erf_(hidden);
  return merger_fc2_.forward(hidden);  // [N / unit, out_hidden]
}

}  // namespace ethereal
