// The Qwen-Image transformer's weights as typed members, and where they come from.
//
// Tensors have the diffusers names; transformer_tensor_names.h maps other formats to them.
//   top level (13 tensors): img_in, txt_norm.weight, txt_in,
//     time_text_embed.timestep_embedder.linear_1 / linear_2, norm_out.linear, proj_out;
//   per block "transformer_blocks.N." (32 tensors): img_mod.1, txt_mod.1, attn.to_q / to_k /
//     to_v, attn.add_q_proj / add_k_proj / add_v_proj, attn.to_out.0, attn.to_add_out,
//     attn.norm_q / norm_k / norm_added_q / norm_added_k (.weight only), img_mlp.net.0.proj,
//     img_mlp.net.2, txt_mlp.net.0.proj, txt_mlp.net.2.
// Every linear layer has a bias. Linear weights are LinearLayers: packed once in the
// weight dtype; norm weights are kept in the compute dtype, the dtype diffusers multiplies by.
//
// A TransformerWeightSource produces the tensors: CheckpointWeightSource reads them through a
// WeightLoader, RandomWeightSource generates seeded random values (benchmarks and tests that
// need full-size layers without a file). Both allocate every byte through the current
// allocator and work in a dry run.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/linear_layer.h"
#include "models/model_precision.h"
#include "models/qwen_image/transformer_config.h"
#include "models/weight_loader.h"
#include "runtime/tensor.h"

namespace ethereal {

class TransformerWeightSource {
 public:
  virtual ~TransformerWeightSource() = default;
  // The layer "<prefix>.weight" [out_features, in_features] with "<prefix>.bias"
  // [out_features].
  virtual LinearLayer linear(const std::string& prefix, std::int64_t out_features,
                             std::int64_t in_features) = 0;
  // The norm weight `name` [length].
  virtual Tensor norm_weight(const std::string& name, std::int64_t length) = 0;
};

class CheckpointWeightSource final : public TransformerWeightSource {
 public:
  CheckpointWeightSource(WeightLoader& loader, ModelPrecision precision);

  LinearLayer linear(const std::string& prefix, std::int64_t out_features,
                     std::int64_t in_features) override;
  Tensor norm_weight(const std::string& name, std::int64_t length) override;

 private:
  WeightLoader& loader_;
  ModelPrecision precision_;
};

// A [rows, columns] f32 tensor uniform in [low, high) whose row r depends only on `seed`,
// `name` and r: RandomWeightSource's values for the tensor `name` with these bounds (benchmarks
// quantise them). Only allocated in a dry run.
Tensor random_uniform_matrix(std::uint64_t seed, const std::string& name, std::int64_t rows,
                             std::int64_t columns, float low, float high);

// Linear weights uniform in [-a, a] with a = sqrt(3 / in_features) (the variance of
// N(0, 1 / in_features)), biases uniform in [-0.1, 0.1], norm weights uniform in [0.9, 1.1].
// The values of a tensor depend only on the seed and the tensor's name.
class RandomWeightSource final : public TransformerWeightSource {
 public:
  RandomWeightSource(std::uint64_t seed, ModelPrecision precision);

  LinearLayer linear(const std::string& prefix, std::int64_t out_features,
                     std::int64_t in_features) override;
  Tensor norm_weight(const std::string& name, std::int64_t length) override;

 private:
  std::uint64_t seed_;
  ModelPrecision precision_;
};

// "net.0.proj" (D -> 4D, followed by GELU tanh) and "net.2" (4D -> D).
struct FeedForwardWeights {
  LinearLayer up;
  LinearLayer down;
};

struct TransformerBlockWeights {
  LinearLayer img_mod;  // D -> 6D: (shift, scale, gate) of attention, then of the MLP
  LinearLayer txt_mod;
  LinearLayer to_q;  // image stream
  LinearLayer to_k;
  LinearLayer to_v;
  LinearLayer add_q_proj;  // text stream
  LinearLayer add_k_proj;
  LinearLayer add_v_proj;
  Tensor norm_q;  // [head_dim]
  Tensor norm_k;
  Tensor norm_added_q;
  Tensor norm_added_k;
  LinearLayer to_out;      // attn.to_out.0, image stream
  LinearLayer to_add_out;  // text stream
  FeedForwardWeights img_mlp;
  FeedForwardWeights txt_mlp;
};

struct TransformerTopWeights {
  LinearLayer img_in;         // in_channels -> D
  Tensor txt_norm;            // [joint_attention_dim]
  LinearLayer txt_in;         // joint_attention_dim -> D
  LinearLayer time_linear_1;  // 256 -> D
  LinearLayer time_linear_2;  // D -> D
  LinearLayer norm_out;       // D -> 2D: (scale, shift), in that order
  LinearLayer proj_out;       // D -> patch^2 x out_channels
};

// Requests the top-level tensors from `source`, in a fixed order.
TransformerTopWeights build_top_weights(TransformerWeightSource& source,
                                        const QwenImageTransformerConfig& config);
// Requests the tensors of block `index`, in a fixed order.
TransformerBlockWeights build_block_weights(TransformerWeightSource& source,
                                            const QwenImageTransformerConfig& config,
                                            std::int64_t index);

}  // namespace ethereal
