#include "models/tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <mutex>
#include <queue>

#include <fmt/format.h>

#include "models/tokenizer/byte_level.h"
#include "models/tokenizer/pretokenizer.h"
#include "models/tokenizer/tokenizer_files.h"
#include "models/tokenizer/unicode_text.h"
#include "runtime/error.h"

namespace ethereal {
namespace {

// Token ids index dense tables, so a corrupt file with an id like 2^31 must not size them.
// Released vocabularies stay far below this bound (Qwen2: 151,665 ids).
constexpr std::int64_t kMaxTokenId = (std::int64_t{1} << 24) - 1;

std::uint64_t merge_key(std::int32_t left, std::int32_t right) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(left)) << 32) |
         static_cast<std::uint32_t>(right);
}

// Hash and equality that accept std::string_view, so lookups need no temporary std::string.
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

}  // namespace

std::string BpeVocabulary::describe_merge(std::size_t index) const {
  if (index < merge_lines.size()) {
    return fmt::format("{} line {}", merges_source, merge_lines[index]);
  }
  return fmt::format("{}: model.merges[{}]", merges_source, index);
}

// Results of BPE per pre-tokenised piece. Text repeats words, so most pieces are found here.
class BpeTokenizer::WordCache {
 public:
  bool find(std::string_view word, std::vector<std::int32_t>& ids) {
    std::lock_guard lock(mutex_);
    const auto it = entries_.find(word);
    if (it == entries_.end())
      return false;
    ids.insert(ids.end(), it->second.begin(), it->second.end());
    return true;
  }

  void insert(std::string_view word, const std::vector<std::int32_t>& tokens) {
    if (word.size() > kMaxWordBytes)
      return;
    std::lock_guard lock(mutex_);
    // Dropping everything at the bound is crude but keeps memory bounded with no bookkeeping.
    if (entries_.size() >= kMaxEntries)
      entries_.clear();
    entries_.emplace(std::string(word), tokens);
  }

 private:
  static constexpr std::size_t kMaxEntries = 65536;
  static constexpr std::size_t kMaxWordBytes = 256;

  std::mutex mutex_;
  std::unordered_map<std::string, std::vector<std::int32_t>, StringHash, std::equal_to<>> entries_;
};

BpeTokenizer::BpeTokenizer(BpeVocabulary vocabulary)
    : nfc_(vocabulary.nfc),
      ignore_merges_(vocabulary.ignore_merges),
      cache_(std::make_unique<WordCache>()) {
  source_ = vocabulary.tokens_source;
  for (const std::string* other : {&vocabulary.merges_source, &vocabulary.added_tokens_source}) {
    if (!other->empty() && source_.find(*other) == std::string::npos)
      source_ += ", " + *other;
  }
  index_tokens(vocabulary);
  index_merges(vocabulary);
  index_added_tokens(vocabulary);
}

BpeTokenizer::~BpeTokenizer() = default;
BpeTokenizer::BpeTokenizer(BpeTokenizer&&) noexcept = default;
BpeTokenizer& BpeTokenizer::operator=(BpeTokenizer&&) noexcept = default;

BpeTokenizer BpeTokenizer::from_tokenizer_json(const std::filesystem::path& path) {
  return BpeTokenizer(read_tokenizer_json(path));
}

BpeTokenizer BpeTokenizer::from_vocab_and_merges(const std::filesystem::path& vocab_json,
                                                 const std::filesystem::path& merges_txt) {
  const std::filesystem::path folder = vocab_json.parent_path();
  const std::filesystem::path added_tokens = folder / "added_tokens.json";
  const std::filesystem::path config = folder / "tokenizer_config.json";
  return BpeTokenizer(read_vocab_and_merges(
      vocab_json, merges_txt, std::filesystem::exists(added_tokens) ? added_tokens : "",
      std::filesystem::exists(config) ? config : ""));
}

BpeTokenizer BpeTokenizer::from_directory(const std::filesystem::path& directory) {
  const std::filesystem::path tokenizer_json = directory / "tokenizer.json";
  if (std::filesystem::exists(tokenizer_json)) {
    return from_tokenizer_json(tokenizer_json);
  }
  const std::filesystem::path vocab_json = directory / "vocab.json";
  const std::filesystem::path merges_txt = directory / "merges.txt";
  if (std::filesystem::exists(vocab_json) && std::filesystem::exists(merges_txt)) {
    return from_vocab_and_merges(vocab_json, merges_txt);
  }
  throw InvalidInputError(fmt::format(
      "no tokenizer files found in {}: expected tokenizer.json, or vocab.json and merges.txt; "
      "point to the tokenizer folder of the model",
      directory.string()));
}

void BpeTokenizer::index_tokens(const BpeVocabulary& vocabulary) {
  std::int64_t max_id = -1;
  for (const auto& [text, id] : vocabulary.tokens)
    max_id = std::max<std::int64_t>(max_id, id);
  for (const AddedToken& token : vocabulary.added_tokens) {
    max_id = std::max<std::int64_t>(max_id, token.id);
  }
  if (max_id > kMaxTokenId) {
    throw InvalidInputError(fmt::format(
        "{}: token id {} is larger than the supported maximum {}; check that the file is an "
        "intact tokenizer vocabulary",
        vocabulary.tokens_source, max_id, kMaxTokenId));
  }
  kinds_.assign(static_cast<std::size_t>(max_id + 1), TokenKind::kNone);
  token_bytes_.assign(kinds_.size(), std::string());
  added_index_.assign(kinds_.size(), -1);

  regular_ids_by_bytes_.reserve(vocabulary.tokens.size());
  for (const auto& [text, id] : vocabulary.tokens) {
    if (id < 0) {
      throw InvalidInputError(fmt::format("{}: token \"{}\" has the negative id {}",
                                          vocabulary.tokens_source, text, id));
    }
    std::optional<std::string> bytes = byte_level::decode(text);
    if (!bytes || bytes->empty()) {
      throw InvalidInputError(fmt::format(
          "{}: token \"{}\" (id {}) is not byte-level text: every character of a regular token "
          "must be one of the 256 byte symbols (\"Ġ\" for a space)",
          vocabulary.tokens_source, text, id));
    }
    if (kinds_[id] != TokenKind::kNone) {
      throw InvalidInputError(fmt::format(
          "{}: tokens \"{}\" and \"{}\" have the same id {}; every token needs its own id",
          vocabulary.tokens_source, byte_level::encode(token_bytes_[id]), text, id));
    }
    if (!regular_ids_by_bytes_.emplace(*bytes, id).second) {
      throw InvalidInputError(fmt::format("{}: token \"{}\" appears twice (ids {} and {})",
                                          vocabulary.tokens_source, text,
                                          regular_ids_by_bytes_.at(*bytes), id));
    }
    kinds_[id] = TokenKind::kRegular;
    token_bytes_[id] = std::move(*bytes);
  }
  regular_token_count_ = vocabulary.tokens.size();

  for (unsigned b = 0; b < 256; ++b) {
    const auto it = regular_ids_by_bytes_.find(std::string(1, static_cast<char>(b)));
    if (it == regular_ids_by_bytes_.end()) {
      throw InvalidInputError(fmt::format(
          "{}: the byte symbol \"{}\" (byte 0x{:02X}) is missing; a byte-level BPE vocabulary "
          "needs all 256 byte symbols so that any text can be encoded",
          vocabulary.tokens_source, byte_level::encode(std::string(1, static_cast<char>(b))), b));
    }
    byte_token_ids_[b] = it->second;
  }
}

void BpeTokenizer::index_merges(const BpeVocabulary& vocabulary) {
  std::unordered_map<std::string_view, std::int32_t> ids_by_text;
  ids_by_text.reserve(vocabulary.tokens.size());
  for (const auto& [text, id] : vocabulary.tokens)
    ids_by_text.emplace(text, id);

  merges_.reserve(vocabulary.merges.size());
  std::string merged;
  for (std::size_t rank = 0; rank < vocabulary.merges.size(); ++rank) {
    const BpeMerge& merge = vocabulary.merges[rank];
    const auto left = ids_by_text.find(merge.left);
    const auto right = ids_by_text.find(merge.right);
    if (left == ids_by_text.end() || right == ids_by_text.end()) {
      throw InvalidInputError(fmt::format(
          "{} (\"{} {}\") references the token \"{}\", which is not in the vocabulary of {}; "
          "the merges and the vocabulary must come from the same tokenizer",
          vocabulary.describe_merge(rank), merge.left, merge.right,
          left == ids_by_text.end() ? merge.left : merge.right, vocabulary.tokens_source));
    }
    merged = merge.left + merge.right;
    const auto result = ids_by_text.find(merged);
    if (result == ids_by_text.end()) {
      throw InvalidInputError(fmt::format(
          "{} (\"{} {}\") produces \"{}\", which is not in the vocabulary of {}; the merges and "
          "the vocabulary must come from the same tokenizer",
          vocabulary.describe_merge(rank), merge.left, merge.right, merged,
          vocabulary.tokens_source));
    }
    // A repeated pair takes the rank of its last occurrence, as HuggingFace tokenizers does.
    merges_.insert_or_assign(merge_key(left->second, right->second),
                             MergeRule{static_cast<std::uint32_t>(rank), result->second});
  }
  merge_count_ = vocabulary.merges.size();
}

void BpeTokenizer::index_added_tokens(const BpeVocabulary& vocabulary) {
  const std::string& source = vocabulary.added_tokens_source.empty()
                                  ? vocabulary.tokens_source
                                  : vocabulary.added_tokens_source;
  for (const AddedToken& token : vocabulary.added_tokens) {
    if (token.content.empty() || token.id < 0) {
      throw InvalidInputError(fmt::format(
          "{}: added token with id {} and content \"{}\" is invalid; an added token needs a "
          "non-negative id and non-empty content",
          source, token.id, token.content));
    }
    unicode::check_utf8(token.content, fmt::format("{}: added token {}", source, token.id));

    const auto same_content = added_ids_by_content_.find(token.content);
    if (same_content != added_ids_by_content_.end()) {
      if (same_content->second == token.id)
        continue;  // a repeated entry
      throw InvalidInputError(fmt::format("{}: added token \"{}\" has two ids, {} and {}", source,
                                          token.content, same_content->second, token.id));
    }
    if (kinds_[token.id] == TokenKind::kAdded) {
      throw InvalidInputError(fmt::format(
          "{}: added tokens \"{}\" and \"{}\" have the same id {}; every token needs its own id",
          source, added_tokens_[added_index_[token.id]].content, token.content, token.id));
    }
    // An added token may re-declare a regular token with the same text (GPT-2 files declare
    // "<|endoftext|>" both ways), but it must not take over the id of a different token.
    if (kinds_[token.id] == TokenKind::kRegular &&
        byte_level::encode(token_bytes_[token.id]) != token.content) {
      throw InvalidInputError(fmt::format(
          "{}: added token \"{}\" has id {}, which belongs to the regular token \"{}\"; every "
          "token needs its own id",
          source, token.content, token.id, byte_level::encode(token_bytes_[token.id])));
    }

    const std::size_t index = added_tokens_.size();
    added_tokens_.push_back(token);
    added_ids_by_content_.emplace(token.content, token.id);
    kinds_[token.id] = TokenKind::kAdded;
    added_index_[token.id] = static_cast<std::int32_t>(index);

    AddedTokenMatcher& matcher = token.normalized ? normalized_matcher_ : raw_matcher_;
    matcher.by_first_byte[static_cast<unsigned char>(token.content[0])].push_back(index);
    matcher.empty = false;
  }

  for (AddedTokenMatcher* matcher : {&raw_matcher_, &normalized_matcher_}) {
    for (std::vector<std::size_t>& bucket : matcher->by_first_byte) {
      std::stable_sort(bucket.begin(), bucket.end(), [&](std::size_t a, std::size_t b) {
        return added_tokens_[a].content.size() > added_tokens_[b].content.size();
      });
    }
  }
}

std::vector<BpeTokenizer::Segment> BpeTokenizer::split_added_tokens(
    std::string_view text, const AddedTokenMatcher& matcher) const {
  std::vector<Segment> segments;
  if (matcher.empty) {
    if (!text.empty())
      segments.push_back({-1, text});
    return segments;
  }

  std::size_t text_start = 0;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const AddedToken* match = nullptr;
    std::size_t match_index = 0;
    for (std::size_t index : matcher.by_first_byte[static_cast<unsigned char>(text[pos])]) {
      if (text.substr(pos).starts_with(added_tokens_[index].content)) {
        match = &added_tokens_[index];
        match_index = index;
        break;
      }
    }
    if (match == nullptr) {
      ++pos;
      continue;
    }

    std::size_t begin = pos;
    std::size_t end = pos + match->content.size();
    if (match->lstrip)
      begin = unicode::skip_whitespace_backward(text, text_start, begin);
    if (match->rstrip)
      end = unicode::skip_whitespace_forward(text, end);
    if (begin > text_start)
      segments.push_back({-1, text.substr(text_start, begin - text_start)});
    segments.push_back({static_cast<std::int32_t>(match_index), text.substr(begin, end - begin)});
    text_start = end;
    pos = end;
  }
  if (text_start < text.size())
    segments.push_back({-1, text.substr(text_start)});
  return segments;
}

std::vector<std::int32_t> BpeTokenizer::encode(std::string_view utf8_text) const {
  unicode::check_utf8(utf8_text, "the text to tokenize");

  std::vector<std::int32_t> ids;
  ids.reserve(utf8_text.size() / 3 + 4);
  for (const Segment& segment : split_added_tokens(utf8_text, raw_matcher_)) {
    if (segment.added_index >= 0) {
      ids.push_back(added_tokens_[segment.added_index].id);
    } else if (nfc_) {
      encode_normalized(unicode::normalize_nfc(segment.text), ids);
    } else {
      encode_normalized(segment.text, ids);
    }
  }
  return ids;
}

void BpeTokenizer::encode_normalized(std::string_view text, std::vector<std::int32_t>& ids) const {
  for (const Segment& segment : split_added_tokens(text, normalized_matcher_)) {
    if (segment.added_index >= 0) {
      ids.push_back(added_tokens_[segment.added_index].id);
      continue;
    }
    for (std::string_view piece : split_qwen2_pretokens(segment.text)) {
      encode_piece(piece, ids);
    }
  }
}

void BpeTokenizer::encode_piece(std::string_view bytes, std::vector<std::int32_t>& ids) const {
  if (bytes.size() == 1) {
    ids.push_back(byte_token_ids_[static_cast<unsigned char>(bytes[0])]);
    return;
  }
  if (ignore_merges_) {
    const auto whole = regular_ids_by_bytes_.find(std::string(bytes));
    if (whole != regular_ids_by_bytes_.end()) {
      ids.push_back(whole->second);
      return;
    }
  }
  if (cache_->find(bytes, ids))
    return;

  const std::vector<std::int32_t> tokens = merge_bytes(bytes);
  cache_->insert(bytes, tokens);
  ids.insert(ids.end(), tokens.begin(), tokens.end());
}

std::vector<std::int32_t> BpeTokenizer::merge_bytes(std::string_view bytes) const {
  // Symbols form a linked list over the byte positions. A merged symbol keeps the position of
  // its left part, and the right part is unlinked and marked with id -1.
  struct Symbol {
    std::int32_t id;
    std::int32_t prev;
    std::int32_t next;
  };
  // A possible merge of the symbol at `left` with its right neighbour, recorded with both ids
  // so that an entry made stale by an earlier merge is recognised and skipped.
  struct Candidate {
    std::uint32_t rank;
    std::int32_t left;
    std::int32_t left_id;
    std::int32_t right_id;
  };
  // Lowest rank first, then the leftmost position.
  const auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
  };

  const auto n = static_cast<std::int32_t>(bytes.size());
  std::vector<Symbol> symbols(bytes.size());
  for (std::int32_t i = 0; i < n; ++i) {
    symbols[i] = {byte_token_ids_[static_cast<unsigned char>(bytes[i])], i - 1,
                  i + 1 < n ? i + 1 : -1};
  }

  std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> queue(later);
  const auto add_candidate = [&](std::int32_t left) {
    const std::int32_t right = symbols[left].next;
    if (right < 0)
      return;
    const auto rule = merges_.find(merge_key(symbols[left].id, symbols[right].id));
    if (rule == merges_.end())
      return;
    queue.push({rule->second.rank, left, symbols[left].id, symbols[right].id});
  };
  for (std::int32_t i = 0; i + 1 < n; ++i)
    add_candidate(i);

  while (!queue.empty()) {
    const Candidate candidate = queue.top();
    queue.pop();
    Symbol& left = symbols[candidate.left];
    if (left.id != candidate.left_id || left.next < 0)
      continue;
    Symbol& right = symbols[left.next];
    if (right.id != candidate.right_id)
      continue;

    left.id = merges_.at(merge_key(candidate.left_id, candidate.right_id)).result;
    right.id = -1;
    left.next = right.next;
    if (left.next >= 0)
      symbols[left.next].prev = candidate.left;
    if (left.prev >= 0)
      add_candidate(left.prev);
    add_candidate(candidate.left);
  }

  std::vector<std::int32_t> tokens;
  for (std::int32_t i = 0; i >= 0; i = symbols[i].next)
    tokens.push_back(symbols[i].id);
  return tokens;
}

std::string BpeTokenizer::decode(std::span<const std::int32_t> ids,
                                 bool skip_special_tokens) const {
  std::string bytes;
  for (std::size_t position = 0; position < ids.size(); ++position) {
    const std::int32_t id = ids[position];
    if (id < 0 || id >= vocabulary_size() || kinds_[id] == TokenKind::kNone) {
      throw InvalidInputError(fmt::format(
          "token id {} at position {} names no token of {} (ids run from 0 to {}); the ids must "
          "come from the same tokenizer",
          id, position, source_, vocabulary_size() - 1));
    }
    if (kinds_[id] == TokenKind::kRegular) {
      bytes += token_bytes_[id];
      continue;
    }
    const AddedToken& token = added_tokens_[added_index_[id]];
    if (!(skip_special_tokens && token.special))
      bytes += token.content;
  }
  return unicode::repair_utf8(bytes);
}

std::optional<std::int32_t> BpeTokenizer::find_token_id(std::string_view content) const {
  const auto added = added_ids_by_content_.find(std::string(content));
  if (added != added_ids_by_content_.end())
    return added->second;
  const std::optional<std::string> bytes = byte_level::decode(content);
  if (!bytes)
    return std::nullopt;
  const auto regular = regular_ids_by_bytes_.find(*bytes);
  if (regular == regular_ids_by_bytes_.end())
    return std::nullopt;
  return regular->second;
}

std::int32_t BpeTokenizer::token_id(std::string_view content) const {
  const std::optional<std::int32_t> id = find_token_id(content);
  if (!id) {
    throw InvalidInputError(fmt::format(
        "token \"{}\" is not defined in {}: it is neither an added token nor a regular token; "
        "use the tokenizer files of the model that expects it",
        content, source_));
  }
  return *id;
}

std::string BpeTokenizer::token_bytes(std::int32_t id) const {
  if (id < 0 || id >= vocabulary_size() || kinds_[id] == TokenKind::kNone) {
    throw InvalidInputError(fmt::format("token id {} names no token of {} (ids run from 0 to {})",
                                        id, source_, vocabulary_size() - 1));
  }
  if (kinds_[id] == TokenKind::kRegular)
    return token_bytes_[id];
  return added_tokens_[added_index_[id]].content;
}

}  // namespace ethereal
