// Small byte-level BPE vocabularies learned from a sample text, for tiny test models.
//
// The result has the layout of a Qwen2 vocabulary. The 256 byte symbols come first (ids 0-255,
// in the order of the byte-level alphabet), then one token per learned merge, then the
// Qwen2.5-VL added tokens ("<|endoftext|>", "<|im_start|>", ..., "<|file_sep|>").
// So code that looks up special tokens by content works on it unchanged, while the embedding
// table of a tiny model stays a few hundred rows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "models/tokenizer/bpe_vocabulary.h"

namespace ethereal {

// The 22 added tokens of Qwen2.5-VL in their id order, numbered from `first_id` (151643 in the
// released vocabulary). The first 14, up to "<|video_pad|>", are special.
std::vector<AddedToken> qwen2_vl_added_tokens(std::int32_t first_id);

// Learns up to `merge_count` merges from `sample_text` (UTF-8, normalised to NFC and split with
// the Qwen2 pattern as encode() does): each step merges the most frequent adjacent pair, the
// pair of smallest ids on ties, so the result is deterministic. Fewer merges are learned when
// every piece of the sample has become a single token. Throws InvalidInputError when the sample
// is not well-formed UTF-8.
BpeVocabulary build_tiny_bpe_vocabulary(std::string_view sample_text, std::size_t merge_count);

}  // namespace ethereal
