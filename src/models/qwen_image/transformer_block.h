// One dual-stream block of the Qwen-Image transformer (diffusers QwenImageTransformerBlock).
//
// With D the stream width and (shift, scale, gate) chunks of the block's modulation linears:
//   img_m = LN(x) (1 + scale1) + shift1          txt_m = the same for c with txt_mod
//   q, k, v per stream; q, k <- RMSNorm over each head (norm_q / norm_k for the image,
//     norm_added_q / norm_added_k for the text), then RoPE (adjacent pairs)
//   joint attention over [text tokens, image tokens] (text first), scale 1/sqrt(head_dim),
//     key mask [text mask, all image tokens]; split back
//   x += gate1 * to_out.0(attn_img)              c += gate1_txt * to_add_out(attn_txt)
//   x += gate2 * MLP(LN(x) (1 + scale2) + shift2), MLP = net.0.proj, GELU tanh, net.2
//   (the same for c with txt_mlp and the text parameters)
// LN is LayerNorm without affine parameters, eps 1e-6.
//
// zero_cond_t: the image modulation linear runs on two embeddings, of sigma and of 0. Image
// tokens below target_tokens use the first set of shift, scale and gate, and the reference
// tokens after them use the second, in both sub-layers. The text stream always uses the first.
//
// Memory: the working set peaks in attention at about six [S, D] tensors (the two streams,
// joint q, k, v and the attention output, with S = S_txt + S_img) plus the attention kernel's
// workspace. The MLP needs one [S_img, 4D] hidden tensor, or [mlp_token_chunk, 4D] when that
// option is set. Every temporary is released as soon as it is dead.
#pragma once

#include <cstdint>

#include "models/qwen_image/transformer_rope.h"
#include "models/qwen_image/transformer_weights.h"
#include "runtime/tensor.h"

namespace ethereal {

// Values that every block of one forward pass reads.
struct BlockContext {
  // SiLU(temb) [R, D] in the compute dtype: row 0 embeds sigma; with zero_cond_t row 1
  // embeds 0 (R = 2).
  Tensor modulation_input;
  const RopeTables* rope = nullptr;
  // uint8 [S_txt + S_img], text first (0 = ignored key), or undefined for no mask.
  Tensor key_mask;
  // Image tokens that use modulation row 0; the rest use row 1 (zero_cond_t only).
  std::int64_t target_tokens = 0;
  std::int64_t heads = 0;
  std::int64_t head_dim = 0;
  // Passed to cpu::attention as max_query_tile; 0 selects the kernel's default.
  std::int64_t attention_query_tile = 0;
  // Maximum tokens per MLP pass; 0 runs each stream's MLP over all its tokens at once.
  std::int64_t mlp_token_chunk = 0;
};

// Runs one block in place on the image stream `img` [S_img, D] and the text stream
// `txt` [S_txt, D] (both contiguous, in the compute dtype).
void run_transformer_block(const TransformerBlockWeights& weights, const BlockContext& context,
                           Tensor& img, Tensor& txt);

}  // namespace ethereal
