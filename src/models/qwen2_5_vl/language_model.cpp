#include "models/qwen2_5_vl/language_model.h"

#include <algorithm>
#include <vector>

#include <fmt/format.h>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/rope.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace ethereal {

namespace {

// transformers' Qwen2RMSNorm rounds the normalised value to the activation dtype before the
// weight multiplies it; with f32 activations there is nothing to round.
cpu::RmsNormOptions text_norm_options(const Qwen25VlTextConfig& config, DType compute) {
  return {static_cast<float>(config.rms_norm_eps), compute == DType::bf16};
}

// Copies `count` values from `source` (of `source_dtype`) into row `row` of `target`.
void copy_row(const void* source, DType source_dtype, Tensor& target, std::int64_t row) {
  const std::int64_t width = target.size(1);
  auto* destination = static_cast<std::byte*>(target.data()) +
                      dtype_bytes(target.dtype(), static_cast<std::size_t>(row * width));
  convert_elements(source, source_dtype, destination, target.dtype(),
                   static_cast<std::size_t>(width));
}

}  // namespace

Qwen25VlDecoderLayer Qwen25VlDecoderLayer::load(WeightLoader& loader, const std::string& prefix,
                                                const Qwen25VlTextConfig& config,
                                                ModelPrecision precision) {
  const std::int64_t hidden = config.hidden_size;
  const std::int64_t q_width = config.num_attention_heads * config.head_dim;
  const std::int64_t kv_width = config.num_key_value_heads * config.head_dim;
  const DType dtype = precision.weight_dtype;
  return Qwen25VlDecoderLayer{
      loader.take(prefix + ".input_layernorm.weight", {hidden}, dtype),
      loader.linear(prefix + ".self_attn.q_proj", q_width, hidden, true, dtype),
      loader.linear(prefix + ".self_attn.k_proj", kv_width, hidden, true, dtype),
      loader.linear(prefix + ".self_attn.v_proj", kv_width, hidden, true, dtype),
      loader.linear(prefix + ".self_attn.o_proj", hidden, q_width, false, dtype),
      loader.take(prefix + ".post_attention_layernorm.weight", {hidden}, dtype),
      Qwen25VlMlp::load(loader, prefix + ".mlp", hidden, config.intermediate_size, false,
                        config.hidden_act, dtype),
  };
}

void Qwen25VlDecoderLayer::forward_(Tensor& x, const Qwen25VlRopeTables& rope,
                                    const Qwen25VlTextConfig& config,
                                    const Qwen25VlOptions& options) const {
  const std::int64_t length = x.size(0);
  const std::int64_t heads = config.num_attention_heads;
  const std::int64_t kv_heads = config.num_key_value_heads;
  const std::int64_t head_dim = config.head_dim;
  const cpu::RmsNormOptions norm_options = text_norm_options(config, x.dtype());

  Tensor attended;  // [S, heads, head_dim]
  {
    Tensor q;
    Tensor k;
    Tensor v;
    {
      const Tensor normed = cpu::rms_norm(x, input_layernorm, norm_options);  // [S, hidden]
      q = q_proj.forward(normed).view({length, heads, head_dim});
      k = k_proj.forward(normed).view({length, kv_heads, head_dim});
      v = v_proj.forward(normed).view({length, kv_heads, head_dim});
    }
    cpu::apply_rope_(q, rope.cos, rope.sin, cpu::RopeStyle::rotate_half);
    cpu::apply_rope_(k, rope.cos, rope.sin, cpu::RopeStyle::rotate_half);

    cpu::AttentionOptions attention_options;
    attention_options.causal = true;
    attention_options.max_query_tile = options.attention_query_tile;
    attention_options.precision = options.attention_precision;
    attended = cpu::attention(q, k, v, attention_options);
  }
  cpu::add_(x, o_proj.forward(attended.view({length, heads * head_dim})));  // [S, hidden]
  attended = Tensor();

  const Tensor normed = cpu::rms_norm(x, post_attention_layernorm, norm_options);  // [S, hidden]
  cpu::add_(x, mlp.forward(normed));
}

std::size_t decoder_layer_bytes(const Qwen25VlDecoderLayer& layer) {
  std::size_t bytes = layer.input_layernorm.nbytes() + layer.post_attention_layernorm.nbytes();
  for (const LinearLayer* linear :
       {&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj, &layer.mlp.gate_proj,
        &layer.mlp.up_proj, &layer.mlp.down_proj}) {
    bytes += linear->nbytes();
  }
  return bytes;
}

Qwen25VlLanguageModel::Qwen25VlLanguageModel(Qwen25VlConfig config, ModelPrecision precision,
                                             Tensor embed_tokens,
                                             std::vector<Qwen25VlDecoderLayer> layers, Tensor norm)
    : config_(std::move(config)),
      precision_(precision),
      embed_tokens_(std::move(embed_tokens)),
      layers_(std::move(layers)),
      norm_(std::move(norm)) {}

Qwen25VlLanguageModel Qwen25VlLanguageModel::load(WeightLoader& loader,
                                                  const Qwen25VlConfig& config,
                                                  ModelPrecision precision) {
  const Qwen25VlTextConfig& text = config.text;
  const DType dtype = precision.weight_dtype;
  Tensor embed_tokens =
      loader.take("model.embed_tokens.weight", {text.vocab_size, text.hidden_size}, dtype);
  std::vector<Qwen25VlDecoderLayer> layers;
  layers.reserve(static_cast<std::size_t>(text.num_hidden_layers));
  for (std::int64_t index = 0; index < text.num_hidden_layers; ++index) {
    layers.push_back(
        Qwen25VlDecoderLayer::load(loader, fmt::format("model.layers.{}", index), text, precision));
  }
  Tensor norm = loader.take("model.norm.weight", {text.hidden_size}, dtype);
  return Qwen25VlLanguageModel(config, precision, std::move(embed_tokens), std::move(layers),
                               std::move(norm));
}

Tensor Qwen25VlLanguageModel::embed(std::span<const std::int64_t> input_ids,
                                    const Tensor& image_embeddings) const {
  const std::size_t table_row_bytes =
      dtype_bytes(embed_tokens_.dtype(), static_cast<std::size_t>(config_.text.hidden_size));
  const bool table_is_dry = embed_tokens_.is_dry();
  const auto* table = table_is_dry ? nullptr : static_cast<const std::byte*>(embed_tokens_.data());
  std::vector<std::byte> zero_row;
  const auto table_row = [&](std::int64_t id) -> const void* {
    if (table_is_dry) {
      // A table loaded in a dry run has no bytes, so its rows read as zeros.
      zero_row.resize(table_row_bytes);
      return zero_row.data();
    }
    return table + static_cast<std::size_t>(id) * table_row_bytes;
  };
  return qwen25vl_token_embeddings(config_, precision_.compute_dtype, input_ids, image_embeddings,
                                   embed_tokens_.dtype(), table_row);
}

Tensor qwen25vl_token_embeddings(const Qwen25VlConfig& config, DType compute_dtype,
                                 std::span<const std::int64_t> input_ids,
                                 const Tensor& image_embeddings, DType table_dtype,
                                 const EmbeddingRowSource& table_row) {
  const std::int64_t hidden = config.text.hidden_size;
  const std::int64_t vocab = config.text.vocab_size;
  const auto length = static_cast<std::int64_t>(input_ids.size());
  for (std::int64_t i = 0; i < length; ++i) {
    const std::int64_t id = input_ids[static_cast<std::size_t>(i)];
    if (id < 0 || id >= vocab) {
      throw InvalidInputError(fmt::format(
          "token id {} at position {} is outside the vocabulary of {} tokens; the tokenizer "
          "does not match the text encoder",
          id, i, vocab));
    }
  }
  const auto image_tokens = std::count(input_ids.begin(), input_ids.end(), config.image_token_id);
  const std::int64_t image_rows = image_embeddings.defined() ? image_embeddings.size(0) : 0;
  if (image_tokens != image_rows ||
      (image_embeddings.defined() &&
       (image_embeddings.dim() != 2 || image_embeddings.size(1) != hidden))) {
    throw InvalidInputError(fmt::format(
        "the prompt has {} image tokens (id {}) but the image embeddings are {}; expected [{}, "
        "{}]",
        image_tokens, config.image_token_id,
        image_embeddings.defined() ? image_embeddings.describe() : "absent", image_tokens, hidden));
  }

  Tensor result = Tensor::empty({length, hidden}, compute_dtype);  // [S, hidden]
  if (result.is_dry() || (image_embeddings.defined() && image_embeddings.is_dry())) {
    return result;
  }
  // Rows are read through the stride, so a strided view costs no copy (which a dry run would
  // not see).
  const Tensor& images = image_embeddings;
  if (images.defined() && images.stride(1) != 1) {
    throw Error(fmt::format("embed: image embeddings {} need stride 1 along the hidden axis",
                            images.describe()));
  }
  const std::size_t image_row_bytes =
      images.defined() ? dtype_bytes(images.dtype(), static_cast<std::size_t>(images.stride(0)))
                       : 0;
  std::int64_t image_row = 0;
  for (std::int64_t i = 0; i < length; ++i) {
    const std::int64_t id = input_ids[static_cast<std::size_t>(i)];
    if (id == config.image_token_id) {
      const auto* source = static_cast<const std::byte*>(images.data()) +
                           static_cast<std::size_t>(image_row++) * image_row_bytes;
      copy_row(source, images.dtype(), result, i);
    } else {
      copy_row(table_row(id), table_dtype, result, i);
    }
  }
  return result;
}

Qwen25VlTextSequence Qwen25VlTextSequence::begin(const Tensor& inputs_embeds,
                                                 const Tensor& position_ids,
                                                 const Qwen25VlTextConfig& config,
                                                 DType compute_dtype) {
  if (inputs_embeds.dim() != 2 || inputs_embeds.size(1) != config.hidden_size ||
      position_ids.dim() != 2 || position_ids.size(0) != 3 ||
      position_ids.size(1) != inputs_embeds.size(0)) {
    throw InvalidInputError(fmt::format(
        "language model: inputs_embeds {} and position_ids {} must be [S, {}] and [3, S]",
        inputs_embeds.describe(), position_ids.describe(), config.hidden_size));
  }
  Qwen25VlTextSequence sequence;
  sequence.rope = text_rope_tables(position_ids, config, compute_dtype == DType::bf16);
  // A private copy in the compute dtype, updated in place layer by layer.
  sequence.hidden = inputs_embeds.dtype() == compute_dtype
                        ? inputs_embeds.clone()
                        : inputs_embeds.to(compute_dtype);  // [S, hidden]
  return sequence;
}

Tensor Qwen25VlTextSequence::finish(const Tensor& norm, const Qwen25VlTextConfig& config) {
  cpu::rms_norm_(hidden, norm, text_norm_options(config, hidden.dtype()));
  return hidden;
}

Tensor Qwen25VlLanguageModel::forward(const Tensor& inputs_embeds, const Tensor& position_ids,
                                      const Qwen25VlOptions& options) const {
  const Qwen25VlTextConfig& text = config_.text;
  Qwen25VlTextSequence sequence =
      Qwen25VlTextSequence::begin(inputs_embeds, position_ids, text, precision_.compute_dtype);
  for (const Qwen25VlDecoderLayer& layer : layers_) {
    layer.forward_(sequence.hidden, sequence.rope, text, options);
  }
  return sequence.finish(norm_, text);
}

}  // namespace ethereal
