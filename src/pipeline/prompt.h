// The Edit-Plus prompt: the chat template around the user's instruction, one
// "Picture i: <|vision_start|><|image_pad|><|vision_end|>" label per input image, and the
// number of leading template tokens the pipeline drops from the encoder's output.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "models/tokenizer/bpe_tokenizer.h"

namespace ethereal {

// The system prompt of Qwen-Image-Edit; it must match byte for byte, because the model was
// trained with it and the dropped prefix is measured in its tokens.
extern const std::string_view kEditSystemPrompt;

struct EncodedPrompt {
  std::vector<std::int32_t> input_ids;  // with each image's pad token repeated
  // Tokens of "<|im_start|>system\n...<|im_end|>\n<|im_start|>user\n", dropped from the
  // text encoder's output (64 with the Qwen2.5-VL vocabulary).
  std::int64_t drop_tokens = 0;
};

// The full template text for `user_prompt` and `image_count` images.
std::string edit_prompt_text(std::string_view user_prompt, std::size_t image_count);

// Tokenises the template and expands the i-th image's single <|image_pad|> token into
// `image_token_counts[i]` copies (merged vision tokens of that image).
EncodedPrompt encode_edit_prompt(const BpeTokenizer& tokenizer, std::string_view user_prompt,
                                 const std::vector<std::int64_t>& image_token_counts);

}  // namespace ethereal
