// Which linear layers a weight format applies to.
//
// Quantised formats replace the linear weights of the transformer blocks and of the text
// encoder's language-model layers and vision blocks. Everything else keeps the checkpoint's
// precision: norms, biases, embeddings, the transformer's img_in, txt_in, time embedding,
// norm_out and proj_out, the vision patch embedding and merger, and the whole VAE. Those
// layers are small, and the input and output projections are where quantisation error hurts
// the image most.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "quant/quant_format.h"

namespace ethereal::quant {

// True for a linear layer that the default rule quantises. `component` is "transformer" or
// "text_encoder"; `module` is the canonical module name without ".weight", for example
// "transformer_blocks.3.attn.to_q", "model.layers.0.mlp.up_proj" or "visual.blocks.2.attn.qkv".
bool is_quantizable_linear(std::string_view component, std::string_view module);

struct QuantPolicy {
  // nullopt keeps linear weights in the model's weight dtype (bf16 or f32).
  std::optional<QuantFormat> format;
  ScaleGranularity fp8_scales = ScaleGranularity::per_channel;
  // Modules that stay unquantised although the default rule would quantise them. An entry
  // matches a module equal to it or starting with it followed by a dot ("transformer_blocks.0"
  // keeps every layer of block 0).
  std::vector<std::string> keep;

  // The format of module `module` of `component`, or nullopt when it stays unquantised.
  std::optional<QuantFormat> format_of(std::string_view component, std::string_view module) const;
};

}  // namespace ethereal::quant
