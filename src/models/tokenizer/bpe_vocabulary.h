// The contents of byte-level BPE tokenizer files, before they are checked and indexed.
//
// The file readers (tokenizer_files.h) fill a BpeVocabulary from a HuggingFace tokenizer.json
// or from vocab.json + merges.txt, checking only what the file syntax needs. BpeTokenizer then
// checks the vocabulary as a whole (byte symbols present, merges over known tokens, distinct
// ids) and names the file and entry of each problem through the source fields below.
// build_tiny_bpe_vocabulary() produces one in memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace ethereal {

// A token matched literally in the input before pre-tokenisation and never split, such as
// "<|im_start|>". Fields follow the HuggingFace added_tokens entries.
struct AddedToken {
  std::int32_t id = 0;
  std::string content;
  // Special tokens are the ones decode() drops when asked to skip special tokens.
  bool special = false;
  // When true the token is matched in the normalised (NFC) text, otherwise in the raw input.
  bool normalized = false;
  // Whether the match also takes the whitespace to its left or right, which is then dropped.
  bool lstrip = false;
  bool rstrip = false;
};

// One merge rule: the adjacent tokens `left` and `right` (byte-level text) become one token.
struct BpeMerge {
  std::string left;
  std::string right;
};

struct BpeVocabulary {
  // Regular tokens as (byte-level text, id), in no particular order.
  std::vector<std::pair<std::string, std::int32_t>> tokens;
  // Merge rules; a merge's rank is its index, and a lower rank is applied first.
  std::vector<BpeMerge> merges;
  std::vector<AddedToken> added_tokens;
  // Normalise the text to NFC before pre-tokenisation (true for Qwen2 files).
  bool nfc = true;
  // Emit a pre-tokenised piece as one token when the vocabulary contains it whole, skipping
  // the merges (the HuggingFace BPE option of that name).
  bool ignore_merges = false;

  // Origins of the entries, for error messages: the file of the regular tokens and of the
  // merges, and for merges.txt the line number of each merge. merge_lines is empty for
  // tokenizer.json, whose merges are named by their index in model.merges.
  std::string tokens_source;
  std::string merges_source;
  std::vector<std::size_t> merge_lines;
  // The file or files that declare the added tokens.
  std::string added_tokens_source;

  // "tokenizer.json: model.merges[12]" or "merges.txt line 14", naming merge `index`.
  std::string describe_merge(std::size_t index) const;
};

}  // namespace ethereal
