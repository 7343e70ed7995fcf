// Building blocks of the Qwen-Image VAE for single images. Activations are channel-first
// [1, C, H, W] in the model's compute dtype; the frame axis of the video model is dropped.
//
// RMS_norm(x) = x / max(||x||_2 over channels, 1e-12) * sqrt(C) * gamma (no bias).
// Residual block: shortcut(x) + conv2(SiLU(RMS_norm(conv1(SiLU(RMS_norm(x)))))), where the
// shortcut is a 1x1 convolution when the channel count changes and the identity otherwise.
// Attention block: x + proj(attention(q, k, v)) with q | k | v = to_qkv(RMS_norm(x)) split
// along channels, one head of C channels over all H * W positions, scale 1 / sqrt(C).
// Downsample: zero padding right 1 and bottom 1, then a 3x3 convolution of stride 2 (C -> C).
// Upsample: nearest-neighbour x2, then a 3x3 convolution (C -> C / 2).
//
// forward() takes its input by value: pass it with std::move so that each block can free it
// as soon as it is dead.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "kernels/cpu/conv.h"
#include "kernels/cpu/linear.h"
#include "models/qwen_image/vae_weights.h"
#include "runtime/tensor.h"

namespace ethereal {

class VaeResidualBlock {
 public:
  VaeResidualBlock(VaeLayerFactory& factory, const std::string& prefix, std::int64_t in_channels,
                   std::int64_t out_channels);

  // [1, in, H, W] -> [1, out, H, W].
  Tensor forward(Tensor x) const;

 private:
  Tensor norm1_gamma_;
  cpu::Conv2d conv1_;
  Tensor norm2_gamma_;
  cpu::Conv2d conv2_;
  std::optional<cpu::Conv2d> shortcut_;
};

class VaeAttentionBlock {
 public:
  VaeAttentionBlock(VaeLayerFactory& factory, const std::string& prefix, std::int64_t channels);

  // [1, C, H, W] -> [1, C, H, W]. `query_tile` bounds the query rows per attention work item
  // (0: the kernel's default); the score matrix is never materialised whatever its value.
  Tensor forward(Tensor x, std::int64_t query_tile) const;

 private:
  std::int64_t channels_;
  Tensor norm_gamma_;
  cpu::PackedLinear to_qkv_;
  cpu::PackedLinear proj_;
};

// Residual block, attention block, residual block at the deepest resolution.
class VaeMidBlock {
 public:
  VaeMidBlock(VaeLayerFactory& factory, const std::string& prefix, std::int64_t channels);

  Tensor forward(Tensor x, std::int64_t query_tile) const;

 private:
  VaeResidualBlock first_;
  VaeAttentionBlock attention_;
  VaeResidualBlock second_;
};

class VaeDownsample {
 public:
  // `temporal`: the layer is a "downsample3d" that owns an unused time_conv.
  VaeDownsample(VaeLayerFactory& factory, const std::string& prefix, std::int64_t channels,
                bool temporal);

  // [1, C, H, W] -> [1, C, floor(H / 2), floor(W / 2)]; H and W must be at least 2.
  Tensor forward(Tensor x) const;

 private:
  cpu::Conv2d conv_;
};

class VaeUpsample {
 public:
  // `temporal`: the layer is an "upsample3d" that owns an unused time_conv.
  VaeUpsample(VaeLayerFactory& factory, const std::string& prefix, std::int64_t channels,
              bool temporal);

  // [1, C, H, W] -> [1, C / 2, 2H, 2W].
  Tensor forward(Tensor x) const;

 private:
  cpu::Conv2d conv_;
};

// RMS_norm -> SiLU -> causal 3x3 convolution: the output head of the encoder and decoder.
class VaeHead {
 public:
  VaeHead(VaeLayerFactory& factory, const std::string& side, std::int64_t in_channels,
          std::int64_t out_channels);

  Tensor forward(Tensor x) const;

 private:
  Tensor norm_gamma_;
  cpu::Conv2d conv_;
};

}  // namespace ethereal
