#include "models/qwen_image/transformer_weights.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "models/qwen_image/transformer_timestep.h"
#include "runtime/parallel.h"
#include "runtime/seeded_random.h"

namespace ethereal {

namespace {

// Rows generated per chunk by RandomWeightSource: bounds its scratch buffer to a few MiB.
constexpr std::int64_t kRandomRowsPerChunk = 64;

// Fills `count` values uniform in [low, high) from the stream (seed, name, row).
void fill_uniform(std::uint64_t seed, std::uint64_t name_key, std::int64_t row, float low,
                  float high, float* values, std::int64_t count) {
  std::uint64_t state = seed ^ name_key ^ (static_cast<std::uint64_t>(row) * 0xd1b54a32d192ed03ULL);
  for (std::int64_t i = 0; i < count; ++i) {
    values[i] = uniform_from_bits(splitmix64(state), low, high);
  }
}

// A [length] tensor of `dtype` uniform in [low, high); only allocated in a dry run.
Tensor random_vector(std::uint64_t seed, const std::string& name, std::int64_t length, float low,
                     float high, DType dtype) {
  return random_uniform_matrix(seed, name, 1, length, low, high).view({length}).to(dtype);
}

std::string block_prefix(std::int64_t index) {
  return fmt::format("transformer_blocks.{}.", index);
}

FeedForwardWeights build_feed_forward(TransformerWeightSource& source, const std::string& prefix,
                                      const QwenImageTransformerConfig& config) {
  const std::int64_t dim = config.inner_dim();
  return FeedForwardWeights{
      .up = source.linear(prefix + ".net.0.proj", config.mlp_dim(), dim),
      .down = source.linear(prefix + ".net.2", dim, config.mlp_dim()),
  };
}

}  // namespace

CheckpointWeightSource::CheckpointWeightSource(WeightLoader& loader, ModelPrecision precision)
    : loader_(loader), precision_(precision) {}

LinearLayer CheckpointWeightSource::linear(const std::string& prefix, std::int64_t out_features,
                                           std::int64_t in_features) {
  return loader_.linear(prefix, out_features, in_features, /*bias=*/true, precision_.weight_dtype);
}

Tensor CheckpointWeightSource::norm_weight(const std::string& name, std::int64_t length) {
  return loader_.take(name, {length}, precision_.compute_dtype);
}

Tensor random_uniform_matrix(std::uint64_t seed, const std::string& name, std::int64_t rows,
                             std::int64_t columns, float low, float high) {
  Tensor values = Tensor::empty({rows, columns}, DType::f32);
  if (!values.is_dry()) {
    float* data = values.data_as<float>();
    const std::uint64_t key = fnv1a_hash(name);
    parallel_for(0, rows, 1, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t row = begin; row < end; ++row) {
        fill_uniform(seed, key, row, low, high, data + row * columns, columns);
      }
    });
  }
  return values;
}

RandomWeightSource::RandomWeightSource(std::uint64_t seed, ModelPrecision precision)
    : seed_(seed), precision_(precision) {}

LinearLayer RandomWeightSource::linear(const std::string& prefix, std::int64_t out_features,
                                       std::int64_t in_features) {
  const Tensor bias = random_vector(seed_, prefix + ".bias", out_features, -0.1f, 0.1f, DType::f32);
  cpu::PackedLinear layer =
      cpu::PackedLinear::allocate(out_features, in_features, precision_.weight_dtype, bias);
  const float bound = std::sqrt(3.0f / static_cast<float>(in_features));
  const std::uint64_t key = fnv1a_hash(prefix + ".weight");
  for (std::int64_t first = 0; first < out_features; first += kRandomRowsPerChunk) {
    const std::int64_t rows = std::min(kRandomRowsPerChunk, out_features - first);
    Tensor chunk = Tensor::empty({rows, in_features}, DType::f32);
    if (!chunk.is_dry()) {
      float* data = chunk.data_as<float>();
      parallel_for(0, rows, 1, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t r = begin; r < end; ++r) {
          fill_uniform(seed_, key, first + r, -bound, bound, data + r * in_features, in_features);
        }
      });
    }
    layer.write_rows(chunk, first);
  }
  return layer;
}

Tensor RandomWeightSource::norm_weight(const std::string& name, std::int64_t length) {
  return random_vector(seed_, name, length, 0.9f, 1.1f, precision_.compute_dtype);
}

TransformerTopWeights build_top_weights(TransformerWeightSource& source,
                                        const QwenImageTransformerConfig& config) {
  const std::int64_t dim = config.inner_dim();
  return TransformerTopWeights{
      .img_in = source.linear("img_in", dim, config.in_channels),
      .txt_norm = source.norm_weight("txt_norm.weight", config.joint_attention_dim),
      .txt_in = source.linear("txt_in", dim, config.joint_attention_dim),
      .time_linear_1 =
          source.linear("time_text_embed.timestep_embedder.linear_1", dim, kTimestepChannels),
      .time_linear_2 = source.linear("time_text_embed.timestep_embedder.linear_2", dim, dim),
      .norm_out = source.linear("norm_out.linear", 2 * dim, dim),
      .proj_out = source.linear("proj_out", config.output_dim(), dim),
  };
}

TransformerBlockWeights build_block_weights(TransformerWeightSource& source,
                                            const QwenImageTransformerConfig& config,
                                            std::int64_t index) {
  const std::string prefix = block_prefix(index);
  const std::int64_t dim = config.inner_dim();
  const std::int64_t head_dim = config.attention_head_dim;
  // Braced initialisation evaluates left to right, so the request order (and with it the
  // allocation order the dry-run planner relies on) is fixed.
  return TransformerBlockWeights{
      .img_mod = source.linear(prefix + "img_mod.1", 6 * dim, dim),
      .txt_mod = source.linear(prefix + "txt_mod.1", 6 * dim, dim),
      .to_q = source.linear(prefix + "attn.to_q", dim, dim),
      .to_k = source.linear(prefix + "attn.to_k", dim, dim),
      .to_v = source.linear(prefix + "attn.to_v", dim, dim),
      .add_q_proj = source.linear(prefix + "attn.add_q_proj", dim, dim),
      .add_k_proj = source.linear(prefix + "attn.add_k_proj", dim, dim),
      .add_v_proj = source.linear(prefix + "attn.add_v_proj", dim, dim),
      .norm_q = source.norm_weight(prefix + "attn.norm_q.weight", head_dim),
      .norm_k = source.norm_weight(prefix + "attn.norm_k.weight", head_dim),
      .norm_added_q = source.norm_weight(prefix + "attn.norm_added_q.weight", head_dim),
      .norm_added_k = source.norm_weight(prefix + "attn.norm_added_k.weight", head_dim),
      .to_out = source.linear(prefix + "attn.to_out.0", dim, dim),
      .to_add_out = source.linear(prefix + "attn.to_add_out", dim, dim),
      .img_mlp = build_feed_forward(source, prefix + "img_mlp", config),
      .txt_mlp = build_feed_forward(source, prefix + "txt_mlp", config),
  };
}

}  // namespace ethereal
