// Tensor names of the Qwen-Image VAE: the canonical (diffusers AutoencoderKLQwenImage) module
// paths the model requests, and the mapping from the original Wan-2.1 / ComfyUI names
// (`qwen_image_vae.safetensors`).
//
// Wan and diffusers number the encoder's down-sampling layers the same way (one flat list of
// residual blocks and resamplers), so encoder.downsamples.N is encoder.down_blocks.N. The
// decoder differs: Wan keeps one flat list decoder.upsamples.N, diffusers groups it into
// up_blocks.S with num_res_blocks + 1 resnets and one upsampler each, so
//   N = S * (num_res_blocks + 2) + j,  j <= num_res_blocks: up_blocks.S.resnets.j,
//                                      j == num_res_blocks + 1: up_blocks.S.upsamplers.0.
// Inside a residual block: residual.0 = norm1, residual.2 = conv1, residual.3 = norm2,
// residual.6 = conv2 (the Sequential's SiLU and dropout slots hold no weights), shortcut =
// conv_shortcut. Mid blocks: middle.0 / .1 / .2 = mid_block.resnets.0 / attentions.0 /
// resnets.1. Heads: head.0 = norm_out, head.2 = conv_out. Top level: conv1 = quant_conv,
// conv2 = post_quant_conv, encoder.conv1 / decoder.conv1 = conv_in.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/qwen_image/vae_config.h"
#include "models/weight_loader.h"

namespace ethereal {

enum class VaeTensorFormat {
  diffusers,  // canonical names (diffusers vae/diffusion_pytorch_model.safetensors)
  wan,        // original Wan-2.1 / ComfyUI names
};

// Maps Wan names to canonical names for a model with `num_res_blocks` residual blocks per
// encoder stage. Names that follow no Wan pattern are returned unchanged, so
// WeightLoader::finish() reports them as unexpected tensors.
TensorNameMap wan_vae_tensor_name_map(std::int64_t num_res_blocks);

// Returns wan when the checkpoint has "encoder.conv1.weight" (a Wan-only name), else diffusers.
VaeTensorFormat detect_vae_tensor_format(const std::vector<std::string>& names);

// The mapping for `format`: the identity for diffusers names, wan_vae_tensor_name_map otherwise.
TensorNameMap vae_tensor_name_map(VaeTensorFormat format, const QwenImageVaeConfig& config);

// Canonical module prefixes, shared by the model builder and the tests.
namespace vae_names {

// Residual block or resampler `index` of the encoder's flat down-sampling list.
std::string encoder_down_block(std::int64_t index);
// Residual block `index` of decoder up-sampling stage `stage`.
std::string decoder_resnet(std::int64_t stage, std::int64_t index);
// The upsampler of decoder stage `stage`.
std::string decoder_upsampler(std::int64_t stage);
// "encoder.mid_block" or "decoder.mid_block".
std::string mid_block(const std::string& side);

}  // namespace vae_names

}  // namespace ethereal
