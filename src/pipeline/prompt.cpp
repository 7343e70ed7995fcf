#include "pipeline/prompt.h"

#include <algorithm>

#include <fmt/format.h>

#include "runtime/error.h"

namespace ethereal {

const std::string_view kEditSystemPrompt =
    "Describe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the "
    "image. Generate a new image that meets the user's requirements while maintaining "
    "consistency with the original input where appropriate.";

namespace {

std::string template_prefix() {
  return fmt::format("<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n", kEditSystemPrompt);
}

}  // namespace

std::string edit_prompt_text(std::string_view user_prompt, std::size_t image_count) {
  std::string text = template_prefix();
  for (std::size_t i = 0; i < image_count; ++i) {
    text += fmt::format("Picture {}: <|vision_start|><|image_pad|><|vision_end|>", i + 1);
  }
  text += user_prompt;
  text += "<|im_end|>\n<|im_start|>assistant\n";
  return text;
}

EncodedPrompt encode_edit_prompt(const BpeTokenizer& tokenizer, std::string_view user_prompt,
                                 const std::vector<std::int64_t>& image_token_counts) {
  const std::int32_t image_pad = tokenizer.token_id("<|image_pad|>");
  const std::vector<std::int32_t> ids =
      tokenizer.encode(edit_prompt_text(user_prompt, image_token_counts.size()));
  const std::vector<std::int32_t> prefix = tokenizer.encode(template_prefix());
  if (prefix.size() > ids.size() || !std::equal(prefix.begin(), prefix.end(), ids.begin())) {
    throw Error(
        "the tokenizer splits the prompt template differently with the instruction "
        "appended, so the system prompt cannot be dropped cleanly");
  }

  EncodedPrompt encoded;
  encoded.drop_tokens = static_cast<std::int64_t>(prefix.size());
  std::size_t image = 0;
  for (std::int32_t id : ids) {
    if (id != image_pad) {
      encoded.input_ids.push_back(id);
      continue;
    }
    if (image >= image_token_counts.size()) {
      throw InvalidInputError(
          "the prompt contains the image placeholder token <|image_pad|> itself; remove it from "
          "the instruction");
    }
    encoded.input_ids.insert(encoded.input_ids.end(),
                             static_cast<std::size_t>(image_token_counts[image]), image_pad);
    ++image;
  }
  if (image != image_token_counts.size()) {
    throw Error(fmt::format("the prompt has {} image placeholders for {} images", image,
                            image_token_counts.size()));
  }
  return encoded;
}

}  // namespace ethereal
