#include "models/tokenizer/tiny_vocabulary.h"

#include <map>
#include <string>
#include <utility>

#include "models/tokenizer/byte_level.h"
#include "models/tokenizer/pretokenizer.h"
#include "models/tokenizer/unicode_text.h"

namespace ethereal {
namespace {

// One distinct piece of the sample: its current tokens and how often it occurs.
struct Word {
  std::vector<std::int32_t> symbols;
  std::size_t count = 0;
};

using Pair = std::pair<std::int32_t, std::int32_t>;

// Counts adjacent pairs over all words; std::map orders them by ids, which breaks ties.
std::map<Pair, std::size_t> count_pairs(const std::vector<Word>& words) {
  std::map<Pair, std::size_t> counts;
  for (const Word& word : words) {
    for (std::size_t i = 0; i + 1 < word.symbols.size(); ++i) {
      counts[{word.symbols[i], word.symbols[i + 1]}] += word.count;
    }
  }
  return counts;
}

// Replaces each occurrence of `pair`, scanning left to right without overlaps.
void apply_merge(std::vector<Word>& words, Pair pair, std::int32_t merged) {
  for (Word& word : words) {
    std::vector<std::int32_t> result;
    result.reserve(word.symbols.size());
    for (std::size_t i = 0; i < word.symbols.size(); ++i) {
      if (i + 1 < word.symbols.size() && word.symbols[i] == pair.first &&
          word.symbols[i + 1] == pair.second) {
        result.push_back(merged);
        ++i;
      } else {
        result.push_back(word.symbols[i]);
      }
    }
    word.symbols = std::move(result);
  }
}

}  // namespace

std::vector<AddedToken> qwen2_vl_added_tokens(std::int32_t first_id) {
  static constexpr std::string_view kContents[] = {
      "<|endoftext|>",      "<|im_start|>",     "<|im_end|>",     "<|object_ref_start|>",
      "<|object_ref_end|>", "<|box_start|>",    "<|box_end|>",    "<|quad_start|>",
      "<|quad_end|>",       "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
      "<|image_pad|>",      "<|video_pad|>",    "<tool_call>",    "</tool_call>",
      "<|fim_prefix|>",     "<|fim_middle|>",   "<|fim_suffix|>", "<|fim_pad|>",
      "<|repo_name|>",      "<|file_sep|>"};
  constexpr std::size_t kSpecialCount = 14;

  std::vector<AddedToken> tokens;
  for (std::size_t i = 0; i < std::size(kContents); ++i) {
    AddedToken token;
    token.id = first_id + static_cast<std::int32_t>(i);
    token.content = kContents[i];
    token.special = i < kSpecialCount;
    tokens.push_back(std::move(token));
  }
  return tokens;
}

BpeVocabulary build_tiny_bpe_vocabulary(std::string_view sample_text, std::size_t merge_count) {
  unicode::check_utf8(sample_text, "the sample text of the tiny vocabulary");
  const std::string normalized = unicode::normalize_nfc(sample_text);

  std::map<std::string_view, std::size_t> piece_counts;
  for (std::string_view piece : split_qwen2_pretokens(normalized))
    ++piece_counts[piece];

  BpeVocabulary vocabulary;
  vocabulary.tokens_source = "the generated tiny vocabulary";
  vocabulary.merges_source = vocabulary.tokens_source;
  std::vector<std::int32_t> byte_ids(256);
  std::map<std::string, std::int32_t> ids_by_text;
  const auto add_token = [&](std::string text) {
    const auto id = static_cast<std::int32_t>(vocabulary.tokens.size());
    ids_by_text.emplace(text, id);
    vocabulary.tokens.emplace_back(std::move(text), id);
    return id;
  };
  for (unsigned char byte : byte_level::bytes_in_alphabet_order()) {
    byte_ids[byte] = add_token(byte_level::encode(std::string(1, static_cast<char>(byte))));
  }

  std::vector<Word> words;
  for (const auto& [piece, count] : piece_counts) {
    Word word;
    word.count = count;
    for (char byte : piece)
      word.symbols.push_back(byte_ids[static_cast<unsigned char>(byte)]);
    words.push_back(std::move(word));
  }

  while (vocabulary.merges.size() < merge_count) {
    const std::map<Pair, std::size_t> counts = count_pairs(words);
    if (counts.empty())
      break;
    auto best = counts.begin();
    for (auto it = counts.begin(); it != counts.end(); ++it) {
      if (it->second > best->second)
        best = it;
    }
    const Pair pair = best->first;
    const std::string& left = vocabulary.tokens[pair.first].first;
    const std::string& right = vocabulary.tokens[pair.second].first;
    vocabulary.merges.push_back({left, right});

    // Different pairs can spell the same text ("a"+"bc" and "ab"+"c"); they share one token.
    std::string merged_text = left + right;
    const auto existing = ids_by_text.find(merged_text);
    const std::int32_t merged =
        existing != ids_by_text.end() ? existing->second : add_token(std::move(merged_text));
    apply_merge(words, pair, merged);
  }

  vocabulary.added_tokens =
      qwen2_vl_added_tokens(static_cast<std::int32_t>(vocabulary.tokens.size()));
  return vocabulary;
}

}  // namespace ethereal
