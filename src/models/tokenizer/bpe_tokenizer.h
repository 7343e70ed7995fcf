// Byte-level BPE tokenizer with Qwen2 pre-tokenisation (the Qwen2Tokenizer of HuggingFace).
//
// encode() runs these steps, as HuggingFace tokenizers does for Qwen2 files:
//   1. reject text that is not well-formed UTF-8;
//   2. cut out the added tokens whose normalized flag is false, matched literally
//      (leftmost match first, the longest one where several start at the same byte);
//   3. normalise each remaining stretch to NFC and cut out the normalized added tokens;
//   4. split each stretch into pieces with the Qwen2 pattern (pretokenizer.h);
//   5. encode each piece's UTF-8 bytes with BPE: start from one token per byte and merge the
//      adjacent pair of lowest merge rank, leftmost first on ties, until no pair has a merge.
// No BOS or EOS token is added. decode() concatenates the bytes of the tokens and replaces
// ill-formed UTF-8 (a character cut between two tokens) with U+FFFD.
//
// Special-token ids are never built in: callers look them up by content with token_id(), so
// the same code serves the real Qwen2.5-VL vocabulary and generated test vocabularies.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "models/tokenizer/bpe_vocabulary.h"

namespace ethereal {

class BpeTokenizer {
 public:
  // Checks and indexes `vocabulary`. Throws InvalidInputError naming the source file and entry
  // for a missing byte symbol, a token that is not byte-level text, or two tokens with one id.
  // It also throws for a merge over an unknown token or with a result outside the vocabulary,
  // and for an added token that is empty or conflicts with another token.
  explicit BpeTokenizer(BpeVocabulary vocabulary);

  // Loads a HuggingFace tokenizer.json (see read_tokenizer_json).
  static BpeTokenizer from_tokenizer_json(const std::filesystem::path& path);
  // Loads vocab.json + merges.txt with the optional added_tokens.json and tokenizer_config.json
  // of the same folder (see read_vocab_and_merges).
  static BpeTokenizer from_vocab_and_merges(const std::filesystem::path& vocab_json,
                                            const std::filesystem::path& merges_txt);
  // Loads `directory`/tokenizer.json when present, else vocab.json + merges.txt there.
  static BpeTokenizer from_directory(const std::filesystem::path& directory);

  ~BpeTokenizer();
  BpeTokenizer(BpeTokenizer&&) noexcept;
  BpeTokenizer& operator=(BpeTokenizer&&) noexcept;
  BpeTokenizer(const BpeTokenizer&) = delete;
  BpeTokenizer& operator=(const BpeTokenizer&) = delete;

  // Encodes UTF-8 text to token ids. Throws InvalidInputError naming the byte offset of the
  // first ill-formed UTF-8 sequence. Safe to call from several threads at once.
  std::vector<std::int32_t> encode(std::string_view utf8_text) const;

  // Decodes token ids to UTF-8 text; added tokens are written as their content unless
  // `skip_special_tokens` is set and they are special. Throws InvalidInputError for an id that
  // names no token, with its position in `ids`.
  std::string decode(std::span<const std::int32_t> ids, bool skip_special_tokens = false) const;

  // Returns the id of an added token (by content, "<|im_start|>") or of a regular token (by its
  // byte-level text, "Ġthe"). Throws InvalidInputError naming the token and the files when
  // there is none.
  std::int32_t token_id(std::string_view content) const;
  std::optional<std::int32_t> find_token_id(std::string_view content) const;

  // Returns the raw bytes of a regular token or the content of an added token. Throws
  // InvalidInputError for an id that names no token.
  std::string token_bytes(std::int32_t id) const;

  // One past the largest token id, the row count an embedding table needs at least.
  std::int32_t vocabulary_size() const { return static_cast<std::int32_t>(kinds_.size()); }
  std::size_t regular_token_count() const { return regular_token_count_; }
  std::size_t merge_count() const { return merge_count_; }
  const std::vector<AddedToken>& added_tokens() const { return added_tokens_; }
  // The files the tokenizer was loaded from, as named in error messages.
  const std::string& source() const { return source_; }

 private:
  enum class TokenKind : std::uint8_t { kNone, kRegular, kAdded };

  struct MergeRule {
    std::uint32_t rank = 0;
    std::int32_t result = 0;
  };

  // Added tokens of one matching phase, as indexes into added_tokens_ grouped by the first
  // byte of their content, longest content first.
  struct AddedTokenMatcher {
    std::array<std::vector<std::size_t>, 256> by_first_byte;
    bool empty = true;
  };

  // One stretch of input: an added token (added_index >= 0) or text to encode further.
  struct Segment {
    std::int32_t added_index = -1;
    std::string_view text;
  };

  class WordCache;

  void index_tokens(const BpeVocabulary& vocabulary);
  void index_merges(const BpeVocabulary& vocabulary);
  void index_added_tokens(const BpeVocabulary& vocabulary);

  std::vector<Segment> split_added_tokens(std::string_view text,
                                          const AddedTokenMatcher& matcher) const;
  void encode_normalized(std::string_view text, std::vector<std::int32_t>& ids) const;
  void encode_piece(std::string_view bytes, std::vector<std::int32_t>& ids) const;
  std::vector<std::int32_t> merge_bytes(std::string_view bytes) const;

  std::string source_;
  bool nfc_ = true;
  bool ignore_merges_ = false;
  std::size_t regular_token_count_ = 0;
  std::size_t merge_count_ = 0;

  // Indexed by token id.
  std::vector<TokenKind> kinds_;
  std::vector<std::string> token_bytes_;   // raw bytes of regular tokens
  std::vector<std::int32_t> added_index_;  // index into added_tokens_, or -1

  std::array<std::int32_t, 256> byte_token_ids_{};
  std::unordered_map<std::string, std::int32_t> regular_ids_by_bytes_;
  // Key: (left id << 32) | right id.
  std::unordered_map<std::uint64_t, MergeRule> merges_;

  std::vector<AddedToken> added_tokens_;
  std::unordered_map<std::string, std::int32_t> added_ids_by_content_;
  AddedTokenMatcher raw_matcher_;
  AddedTokenMatcher normalized_matcher_;

  std::unique_ptr<WordCache> cache_;
};

}  // namespace ethereal
