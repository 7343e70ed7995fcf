#include "models/qwen_image/vae_blocks.h"

#include <utility>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/norm.h"
#include "models/qwen_image/vae_tensor_ops.h"

namespace ethereal {

namespace {

// Unit axes after the channel axis of a gamma: [C, 1, 1, 1] in the 3-D modules (residual
// blocks, heads), [C, 1, 1] in the attention block, which works on 2-D frames.
constexpr std::int64_t kGammaUnitAxes3d = 3;
constexpr std::int64_t kGammaUnitAxes2d = 2;

// RMS_norm followed by SiLU, the pre-activation of every convolution in the residual blocks
// and heads.
Tensor norm_silu(const Tensor& x, const Tensor& gamma) {
  Tensor y = cpu::channel_rms_norm(x, gamma);  // [1, C, H, W]
  cpu::silu_(y);
  return y;
}

std::optional<cpu::Conv2d> make_shortcut(VaeLayerFactory& factory, const std::string& prefix,
                                         std::int64_t in_channels, std::int64_t out_channels) {
  if (in_channels == out_channels) {
    return std::nullopt;
  }
  return factory.causal_conv(prefix + ".conv_shortcut", out_channels, in_channels, 1);
}

}  // namespace

VaeResidualBlock::VaeResidualBlock(VaeLayerFactory& factory, const std::string& prefix,
                                   std::int64_t in_channels, std::int64_t out_channels)
    : norm1_gamma_(factory.gamma(prefix + ".norm1", in_channels, kGammaUnitAxes3d)),
      conv1_(factory.causal_conv(prefix + ".conv1", out_channels, in_channels, 3)),
      norm2_gamma_(factory.gamma(prefix + ".norm2", out_channels, kGammaUnitAxes3d)),
      conv2_(factory.causal_conv(prefix + ".conv2", out_channels, out_channels, 3)),
      shortcut_(make_shortcut(factory, prefix, in_channels, out_channels)) {}

Tensor VaeResidualBlock::forward(Tensor x) const {
  // The shortcut is taken from the input; with equal channel counts it is the input itself.
  const Tensor shortcut = shortcut_ ? shortcut_->forward(x) : x;  // [1, out, H, W]
  Tensor h = norm_silu(x, norm1_gamma_);                          // [1, in, H, W]
  x = Tensor();
  h = conv1_.forward(h);  // [1, out, H, W]
  h = norm_silu(h, norm2_gamma_);
  h = conv2_.forward(h);  // [1, out, H, W]
  cpu::add_(h, shortcut);
  return h;
}

VaeAttentionBlock::VaeAttentionBlock(VaeLayerFactory& factory, const std::string& prefix,
                                     std::int64_t channels)
    : channels_(channels),
      norm_gamma_(factory.gamma(prefix + ".norm", channels, kGammaUnitAxes2d)),
      to_qkv_(factory.pointwise(prefix + ".to_qkv", 3 * channels, channels)),
      proj_(factory.pointwise(prefix + ".proj", channels, channels)) {}

Tensor VaeAttentionBlock::forward(Tensor x, std::int64_t query_tile) const {
  const std::int64_t height = x.size(2);
  const std::int64_t width = x.size(3);
  const std::int64_t c = channels_;
  Tensor rows;
  {
    const Tensor normed = cpu::channel_rms_norm(x, norm_gamma_);  // [1, C, H, W]
    rows = vae_ops::channels_to_rows(normed);                     // [H*W, C]
  }
  Tensor attended;
  {
    const Tensor qkv = to_qkv_.forward(rows);  // [H*W, 3C]: q | k | v along channels
    rows = Tensor();
    cpu::AttentionOptions options;
    options.max_query_tile = query_tile;
    // One head of C channels: [H*W, 1, C] views into the fused projection.
    attended = cpu::attention(qkv.narrow(1, 0, c).unsqueeze(1), qkv.narrow(1, c, c).unsqueeze(1),
                              qkv.narrow(1, 2 * c, c).unsqueeze(1), options);  // [H*W, 1, C]
  }
  Tensor projected = proj_.forward(attended.view({height * width, c}));  // [H*W, C]
  attended = Tensor();
  Tensor y = vae_ops::rows_to_channels(projected, height, width);  // [1, C, H, W]
  projected = Tensor();
  cpu::add_(y, x);
  return y;
}

VaeMidBlock::VaeMidBlock(VaeLayerFactory& factory, const std::string& prefix, std::int64_t channels)
    : first_(factory, prefix + ".resnets.0", channels, channels),
      attention_(factory, prefix + ".attentions.0", channels),
      second_(factory, prefix + ".resnets.1", channels, channels) {}

Tensor VaeMidBlock::forward(Tensor x, std::int64_t query_tile) const {
  x = first_.forward(std::move(x));
  x = attention_.forward(std::move(x), query_tile);
  return second_.forward(std::move(x));
}

namespace {

cpu::Conv2dOptions downsample_options() {
  cpu::Conv2dOptions options;
  options.stride = 2;
  options.padding = {.left = 0, .right = 1, .top = 0, .bottom = 1};
  return options;
}

cpu::Conv2dOptions same_padding_options() {
  cpu::Conv2dOptions options;
  options.padding = cpu::Padding2d::symmetric(1);
  return options;
}

}  // namespace

VaeDownsample::VaeDownsample(VaeLayerFactory& factory, const std::string& prefix,
                             std::int64_t channels, bool temporal)
    : conv_(factory.conv2d(prefix + ".resample.1", channels, channels, 3, downsample_options())) {
  if (temporal) {
    factory.skip_time_conv(prefix + ".time_conv", channels, channels);
  }
}

Tensor VaeDownsample::forward(Tensor x) const {
  return conv_.forward(x);  // [1, C, H/2, W/2]
}

VaeUpsample::VaeUpsample(VaeLayerFactory& factory, const std::string& prefix, std::int64_t channels,
                         bool temporal)
    : conv_(factory.conv2d(prefix + ".resample.1", channels / 2, channels, 3,
                           same_padding_options())) {
  if (temporal) {
    factory.skip_time_conv(prefix + ".time_conv", 2 * channels, channels);
  }
}

Tensor VaeUpsample::forward(Tensor x) const {
  x = vae_ops::upsample_nearest2x_channels_last(x);  // [1, C, 2H, 2W], channel-last storage
  return conv_.forward(x);                           // [1, C/2, 2H, 2W]
}

VaeHead::VaeHead(VaeLayerFactory& factory, const std::string& side, std::int64_t in_channels,
                 std::int64_t out_channels)
    : norm_gamma_(factory.gamma(side + ".norm_out", in_channels, kGammaUnitAxes3d)),
      conv_(factory.causal_conv(side + ".conv_out", out_channels, in_channels, 3)) {}

Tensor VaeHead::forward(Tensor x) const {
  Tensor h = norm_silu(x, norm_gamma_);  // [1, C_in, H, W]
  x = Tensor();
  return conv_.forward(h);  // [1, C_out, H, W]
}

}  // namespace ethereal
