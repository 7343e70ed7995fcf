// Helpers shared by the tokenizer tests: a hand-made byte-level vocabulary small enough to
// reason about merge by merge, and its tokenizer.json.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/tokenizer/bpe_vocabulary.h"
#include "models/tokenizer/byte_level.h"
#include "models/tokenizer/pretokenizer.h"
#include "support/files.h"

namespace ethereal::testing {

using test_support::TemporaryDirectory;
using test_support::write_file;

// Byte-level spelling of one byte, "Ġ" for a space.
inline std::string byte_symbol(char byte) {
  return byte_level::encode(std::string(1, byte));
}

// Ids of the hand-made vocabulary. The 256 byte symbols take ids 0-255 in alphabet order,
// so 'a' = 64 as in Qwen2; merged tokens and added tokens follow.
struct Handmade {
  static constexpr std::int32_t kA = 64;
  static constexpr std::int32_t kB = 65;
  static constexpr std::int32_t kC = 66;
  static constexpr std::int32_t kSpace = 220;      // "Ġ"
  static constexpr std::int32_t kBC = 256;         // merge rank 0: b c
  static constexpr std::int32_t kAB = 257;         // merge rank 1: a b
  static constexpr std::int32_t kABC = 258;        // merge rank 2: a bc
  static constexpr std::int32_t kAA = 259;         // merge rank 3: a a
  static constexpr std::int32_t kSpaceAB = 260;    // merge rank 4: Ġ ab
  static constexpr std::int32_t kImStart = 300;    // "<|im_start|>", special
  static constexpr std::int32_t kImEnd = 301;      // "<|im_end|>", special
  static constexpr std::int32_t kX = 302;          // "<|x|>", special
  static constexpr std::int32_t kXY = 303;         // "<|x|>y", special, longer than "<|x|>"
  static constexpr std::int32_t kMask = 304;       // "<mask>", lstrip and rstrip, not special
  static constexpr std::int32_t kEAcute = 305;     // "é!" (NFC), normalized, not special
  static constexpr std::int32_t kRawEAcute = 306;  // "é?" (NFC), matched in the raw text
};

inline BpeVocabulary handmade_vocabulary() {
  BpeVocabulary vocabulary;
  vocabulary.tokens_source = "handmade";
  vocabulary.merges_source = "handmade";
  for (unsigned char byte : byte_level::bytes_in_alphabet_order()) {
    vocabulary.tokens.emplace_back(byte_symbol(static_cast<char>(byte)),
                                   static_cast<std::int32_t>(vocabulary.tokens.size()));
  }
  const std::pair<const char*, const char*> merges[] = {
      {"b", "c"}, {"a", "b"}, {"a", "bc"}, {"a", "a"}, {"Ġ", "ab"}};
  for (const auto& [left, right] : merges) {
    vocabulary.merges.push_back({left, right});
    vocabulary.tokens.emplace_back(std::string(left) + right,
                                   static_cast<std::int32_t>(vocabulary.tokens.size()));
  }
  const auto add = [&](std::int32_t id, std::string content, bool special) {
    AddedToken token;
    token.id = id;
    token.content = std::move(content);
    token.special = special;
    vocabulary.added_tokens.push_back(std::move(token));
    return &vocabulary.added_tokens.back();
  };
  add(Handmade::kImStart, "<|im_start|>", true);
  add(Handmade::kImEnd, "<|im_end|>", true);
  add(Handmade::kX, "<|x|>", true);
  add(Handmade::kXY, "<|x|>y", true);
  AddedToken* mask = add(Handmade::kMask, "<mask>", false);
  mask->lstrip = true;
  mask->rstrip = true;
  add(Handmade::kEAcute, "\u00e9!", false)->normalized = true;
  add(Handmade::kRawEAcute, "\u00e9?", false);
  return vocabulary;
}

// The hand-made vocabulary as a tokenizer.json, built with nlohmann::json rather than with
// write_tokenizer_json() so that the reader is tested against an independent writer.
inline nlohmann::json handmade_tokenizer_json() {
  const BpeVocabulary vocabulary = handmade_vocabulary();
  nlohmann::json vocab = nlohmann::json::object();
  for (const auto& [text, id] : vocabulary.tokens)
    vocab[text] = id;
  nlohmann::json merges = nlohmann::json::array();
  for (const BpeMerge& merge : vocabulary.merges)
    merges.push_back(merge.left + " " + merge.right);
  nlohmann::json added = nlohmann::json::array();
  for (const AddedToken& token : vocabulary.added_tokens) {
    added.push_back({{"id", token.id},
                     {"content", token.content},
                     {"special", token.special},
                     {"normalized", token.normalized},
                     {"lstrip", token.lstrip},
                     {"rstrip", token.rstrip},
                     {"single_word", false}});
  }
  const nlohmann::json byte_level_step = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  nlohmann::json split = {{"type", "Split"},
                          {"pattern", {{"Regex", std::string(kQwen2PretokenizerPattern)}}},
                          {"behavior", "Isolated"},
                          {"invert", false}};
  nlohmann::json steps = nlohmann::json::array({split, byte_level_step});
  return {{"version", "1.0"},
          {"added_tokens", added},
          {"normalizer", {{"type", "NFC"}}},
          {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", steps}}},
          {"post_processor", byte_level_step},
          {"decoder", byte_level_step},
          {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"vocab", vocab}, {"merges", merges}}}};
}

}  // namespace ethereal::testing
