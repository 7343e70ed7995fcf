// Qwen2 pre-tokenisation: splits normalised text into the pieces that BPE encodes one by one.
//
// Qwen2 tokenizer files describe the split with this regular expression (HuggingFace Split
// pre-tokenizer, behaviour "Isolated"):
//
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//   \s*[\r\n]+|\s+(?!\S)|\s+
//
// split_qwen2_pretokens() is a hand-written matcher with the same result as a backtracking
// engine: at each position the first alternative that matches wins (not the longest one), and
// each greedy loop gives back characters only where a later part of its alternative needs
// them. Every character is a letter, a number, whitespace or "other", and each class starts
// some alternative, so the pieces cover the whole text without gaps.
#pragma once

#include <string_view>
#include <vector>

namespace ethereal {

// The pattern above, byte for byte as Qwen2 tokenizer.json files spell it.
inline constexpr std::string_view kQwen2PretokenizerPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Splits well-formed UTF-8 text into pieces that view `text`, in order and without gaps.
// Character classes are those of unicode_text.h. Empty text gives no pieces.
std::vector<std::string_view> split_qwen2_pretokens(std::string_view text);

}  // namespace ethereal
