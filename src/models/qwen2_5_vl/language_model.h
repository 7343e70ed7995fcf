// The Qwen2.5-VL language model (transformers Qwen2_5_VLTextModel) used as a text encoder:
// token embeddings with image features spliced in, causal decoder layers with M-RoPE, and
// the final RMSNorm. It has no lm_head, because the result is the last hidden state.
//
// Decoder layer (batch 1, no padding, so the attention mask is causal only):
//   x += o_proj(attention(mrope(q_proj(n)), mrope(k_proj(n)), v_proj(n))), n = RMSNorm(x),
//        q/k/v with bias, o_proj without, grouped-query attention (query head i reads
//        key/value head i / (heads / kv_heads)), scale 1 / sqrt(head_dim);
//   x += down(act(gate(m)) * up(m)), m = RMSNorm(x), no biases.
//
// The embedding table (152064 x 3584 for the 7B model, 1.09 GB in bf16) stays in the weight
// dtype. Only the rows of the prompt's tokens are converted to the compute dtype. A streamed
// language model (language_model_streaming.h) reads only those rows from the checkpoint.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "models/linear_layer.h"
#include "models/model_precision.h"
#include "models/qwen2_5_vl/config.h"
#include "models/qwen2_5_vl/layers.h"
#include "models/qwen2_5_vl/positions.h"
#include "models/weight_loader.h"
#include "runtime/tensor.h"

namespace ethereal {

struct Qwen25VlDecoderLayer {
  Tensor input_layernorm;           // [hidden]
  LinearLayer q_proj;               // hidden -> heads x head_dim, with bias
  LinearLayer k_proj;               // hidden -> kv_heads x head_dim, with bias
  LinearLayer v_proj;               // hidden -> kv_heads x head_dim, with bias
  LinearLayer o_proj;               // heads x head_dim -> hidden
  Tensor post_attention_layernorm;  // [hidden]
  Qwen25VlMlp mlp;

  // Loads "<prefix>.input_layernorm", "<prefix>.self_attn.q_proj", ... ("model.layers.N").
  static Qwen25VlDecoderLayer load(WeightLoader& loader, const std::string& prefix,
                                   const Qwen25VlTextConfig& config, ModelPrecision precision);

  // Updates x [S, hidden] in place. `rope` contains the M-RoPE tables of the S positions.
  void forward_(Tensor& x, const Qwen25VlRopeTables& rope, const Qwen25VlTextConfig& config,
                const Qwen25VlOptions& options) const;
};

// Device bytes of one decoder layer: packed or quantised weights, biases, adapters and norms.
std::size_t decoder_layer_bytes(const Qwen25VlDecoderLayer& layer);

// Function from a token id to its embedding-table row (hidden values in the table dtype). The
// returned pointer stays valid until the next call.
using EmbeddingRowSource = std::function<const void*(std::int64_t id)>;

// Token embeddings [S, hidden] in `compute_dtype`: the table rows from `table_row` (in
// `table_dtype`), except that image_token_id tokens take, in order, the rows of
// image_embeddings. Throws InvalidInputError as Qwen25VlLanguageModel::embed documents. A dry
// run only allocates the result and calls `table_row` for no token.
Tensor qwen25vl_token_embeddings(const Qwen25VlConfig& config, DType compute_dtype,
                                 std::span<const std::int64_t> input_ids,
                                 const Tensor& image_embeddings, DType table_dtype,
                                 const EmbeddingRowSource& table_row);

// One sequence in a language-model forward pass: its hidden states [S, hidden], updated in
// place layer by layer, and the M-RoPE tables of its positions.
struct Qwen25VlTextSequence {
  Tensor hidden;
  Qwen25VlRopeTables rope;

  // Checks inputs_embeds [S, hidden] and position_ids int64 [3, S] (InvalidInputError), builds
  // the tables and copies inputs_embeds into `hidden` in the compute dtype.
  static Qwen25VlTextSequence begin(const Tensor& inputs_embeds, const Tensor& position_ids,
                                    const Qwen25VlTextConfig& config, DType compute_dtype);
  // Applies the final RMSNorm with weight `norm` to `hidden` and returns it.
  Tensor finish(const Tensor& norm, const Qwen25VlTextConfig& config);
};

class Qwen25VlLanguageModel {
 public:
  // Loads "model.embed_tokens.weight", the decoder layers and "model.norm.weight" in
  // precision.weight_dtype.
  static Qwen25VlLanguageModel load(WeightLoader& loader, const Qwen25VlConfig& config,
                                    ModelPrecision precision);

  // Token embeddings [S, hidden] in the compute dtype, with the rows of image_token_id tokens
  // replaced, in order, by the rows of image_embeddings [N_image_tokens, hidden] (f32 or bf16;
  // may be undefined when the prompt has no image tokens). Throws InvalidInputError for a
  // token id outside the vocabulary or when the image token count differs from N.
  Tensor embed(std::span<const std::int64_t> input_ids, const Tensor& image_embeddings) const;

  // inputs_embeds [S, hidden] and position_ids int64 [3, S] -> the last hidden state
  // [S, hidden] after the final RMSNorm, in the compute dtype.
  Tensor forward(const Tensor& inputs_embeds, const Tensor& position_ids,
                 const Qwen25VlOptions& options = {}) const;

  const Qwen25VlTextConfig& config() const { return config_.text; }

 private:
  Qwen25VlLanguageModel(Qwen25VlConfig config, ModelPrecision precision, Tensor embed_tokens,
                        std::vector<Qwen25VlDecoderLayer> layers, Tensor norm);

  Qwen25VlConfig config_;
  ModelPrecision precision_;
  Tensor embed_tokens_;  // [vocab, hidden] in the weight dtype
  std::vector<Qwen25VlDecoderLayer> layers_;
  Tensor norm_;  // [hidden]
};

}  // namespace ethereal
