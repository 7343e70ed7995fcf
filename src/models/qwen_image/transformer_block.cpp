#include "models/qwen_image/transformer_block.h"

#include <algorithm>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/modulation.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/rope.h"

namespace ethereal {

namespace {

enum Sublayer : std::int64_t { kAttention = 0, kMlp = 1 };
enum ModulationChunk : std::int64_t { kShift = 0, kScale = 1, kGate = 2 };

// The shift, scale and gate of one sub-layer of one stream.
struct SublayerModulation {
  cpu::ChannelParam shift;
  cpu::ChannelParam scale;
  cpu::ChannelParam gate;
};

// A [D] view of one chunk of row `row` of a [R, 6D] modulation output, laid out as
// (shift, scale, gate) of attention, then (shift, scale, gate) of the MLP.
Tensor modulation_chunk(const Tensor& params, std::int64_t row, Sublayer sublayer,
                        ModulationChunk chunk) {
  const std::int64_t dim = params.size(1) / 6;
  return params.select(0, row).narrow(0, (3 * sublayer + chunk) * dim, dim);
}

// One chunk for every token: row 0 alone, or with zero_cond_t row 0 for tokens below `split`
// and row 1 from there on.
cpu::ChannelParam channel_param(const Tensor& params, Sublayer sublayer, ModulationChunk chunk,
                                std::int64_t split) {
  Tensor first = modulation_chunk(params, 0, sublayer, chunk);
  if (params.size(0) == 1) {
    return first;
  }
  return {first, modulation_chunk(params, 1, sublayer, chunk), split};
}

SublayerModulation sublayer_modulation(const Tensor& params, Sublayer sublayer,
                                       std::int64_t split) {
  return SublayerModulation{
      .shift = channel_param(params, sublayer, kShift, split),
      .scale = channel_param(params, sublayer, kScale, split),
      .gate = channel_param(params, sublayer, kGate, split),
  };
}

// The parameter as seen by the tokens [start, start + count) of its stream.
cpu::ChannelParam param_for_rows(const cpu::ChannelParam& param, std::int64_t start,
                                 std::int64_t count) {
  if (!param.second.defined()) {
    return param;
  }
  return {param.first, param.second, std::clamp(param.split - start, std::int64_t{0}, count)};
}

// Writes q, k and v of one stream into rows [first_row, first_row + n) of the joint [S, D]
// tensors, n being the stream's token count.
void project_qkv(const Tensor& modulated, const LinearLayer& to_q, const LinearLayer& to_k,
                 const LinearLayer& to_v, std::int64_t first_row, const Tensor& q, const Tensor& k,
                 const Tensor& v) {
  const std::int64_t count = modulated.size(0);
  to_q.forward_into(modulated, q.narrow(0, first_row, count));
  to_k.forward_into(modulated, k.narrow(0, first_row, count));
  to_v.forward_into(modulated, v.narrow(0, first_row, count));
}

// RMSNorm over each head, then RoPE, on rows [first_row, first_row + count) of joint q or k
// viewed as [S, H, head_dim].
void normalize_and_rotate(const Tensor& heads, std::int64_t first_row, std::int64_t count,
                          const Tensor& norm_weight, const Tensor& cos, const Tensor& sin) {
  Tensor rows = heads.narrow(0, first_row, count);
  cpu::rms_norm_(rows, norm_weight);
  cpu::apply_rope_(rows, cos, sin, cpu::RopeStyle::interleaved);
}

// Joint attention of both streams; returns the attention output [S_txt + S_img, D], text rows
// first. The joint q, k and v are released before it returns.
Tensor joint_attention(const TransformerBlockWeights& weights, const BlockContext& context,
                       const Tensor& img, const Tensor& txt, const SublayerModulation& img_mod,
                       const SublayerModulation& txt_mod) {
  const std::int64_t text = txt.size(0);
  const std::int64_t image = img.size(0);
  const std::int64_t total = text + image;
  const std::int64_t dim = img.size(1);
  const Tensor q = Tensor::empty({total, dim}, img.dtype());  // [S, D]
  const Tensor k = Tensor::empty({total, dim}, img.dtype());
  const Tensor v = Tensor::empty({total, dim}, img.dtype());
  {
    const Tensor modulated = cpu::layer_norm_modulate(txt, txt_mod.scale, txt_mod.shift);
    project_qkv(modulated, weights.add_q_proj, weights.add_k_proj, weights.add_v_proj, 0, q, k, v);
  }
  {
    const Tensor modulated = cpu::layer_norm_modulate(img, img_mod.scale, img_mod.shift);
    project_qkv(modulated, weights.to_q, weights.to_k, weights.to_v, text, q, k, v);
  }

  // [S, H, head_dim] views of the joint projections.
  const Shape heads_shape = {total, context.heads, context.head_dim};
  const Tensor q_heads = q.view(heads_shape);
  const Tensor k_heads = k.view(heads_shape);
  const RopeTables& rope = *context.rope;
  normalize_and_rotate(q_heads, 0, text, weights.norm_added_q, rope.text_cos, rope.text_sin);
  normalize_and_rotate(q_heads, text, image, weights.norm_q, rope.image_cos, rope.image_sin);
  normalize_and_rotate(k_heads, 0, text, weights.norm_added_k, rope.text_cos, rope.text_sin);
  normalize_and_rotate(k_heads, text, image, weights.norm_k, rope.image_cos, rope.image_sin);

  cpu::AttentionOptions options;
  options.key_mask = context.key_mask;
  options.max_query_tile = context.attention_query_tile;
  return cpu::attention(q_heads, k_heads, v.view(heads_shape), options).view({total, dim});
}

void attention_sublayer(const TransformerBlockWeights& weights, const BlockContext& context,
                        const SublayerModulation& img_mod, const SublayerModulation& txt_mod,
                        Tensor& img, Tensor& txt) {
  const std::int64_t text = txt.size(0);
  const Tensor attended = joint_attention(weights, context, img, txt, img_mod, txt_mod);  // [S, D]
  {
    const Tensor out = weights.to_add_out.forward(attended.narrow(0, 0, text));  // [S_txt, D]
    cpu::add_gated_(txt, out, txt_mod.gate);
  }
  {
    const Tensor out = weights.to_out.forward(attended.narrow(0, text, img.size(0)));  // [S_img, D]
    cpu::add_gated_(img, out, img_mod.gate);
  }
}

// x += gate * MLP(LN(x) (1 + scale) + shift), over chunks of at most `chunk_tokens` tokens.
void mlp_sublayer(const FeedForwardWeights& mlp, const SublayerModulation& mod,
                  std::int64_t chunk_tokens, Tensor& x) {
  const std::int64_t tokens = x.size(0);
  const std::int64_t step = chunk_tokens > 0 ? chunk_tokens : std::max<std::int64_t>(tokens, 1);
  for (std::int64_t start = 0; start < tokens; start += step) {
    const std::int64_t count = std::min(step, tokens - start);
    Tensor rows = x.narrow(0, start, count);  // [n, D] view into x
    Tensor hidden;                            // [n, 4D]
    {
      const Tensor modulated = cpu::layer_norm_modulate(
          rows, param_for_rows(mod.scale, start, count), param_for_rows(mod.shift, start, count));
      hidden = mlp.up.forward(modulated);
    }
    cpu::gelu_tanh_(hidden);
    const Tensor out = mlp.down.forward(hidden);  // [n, D]
    hidden = Tensor();
    cpu::add_gated_(rows, out, param_for_rows(mod.gate, start, count));
  }
}

}  // namespace

void run_transformer_block(const TransformerBlockWeights& weights, const BlockContext& context,
                           Tensor& img, Tensor& txt) {
  // [R, 6D]: one parameter set per row of modulation_input (two with zero_cond_t).
  const Tensor img_params = weights.img_mod.forward(context.modulation_input);
  // [1, 6D]: the text stream uses the sigma row only.
  const Tensor txt_params = weights.txt_mod.forward(context.modulation_input.narrow(0, 0, 1));

  attention_sublayer(weights, context,
                     sublayer_modulation(img_params, kAttention, context.target_tokens),
                     sublayer_modulation(txt_params, kAttention, 0), img, txt);
  mlp_sublayer(weights.img_mlp, sublayer_modulation(img_params, kMlp, context.target_tokens),
               context.mlp_token_chunk, img);
  mlp_sublayer(weights.txt_mlp, sublayer_modulation(txt_params, kMlp, 0), context.mlp_token_chunk,
               txt);
}

}  // namespace ethereal
