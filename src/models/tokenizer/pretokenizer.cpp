#include "models/tokenizer/pretokenizer.h"

#include <cstddef>
#include <cstdint>

#include "models/tokenizer/unicode_text.h"

namespace ethereal {
namespace {

enum class CharClass : std::uint8_t { kLetter, kNumber, kSpace, kOther };

// Code points of one text with their classes. Each match_* function below returns the length
// in code points of its alternative's match at index `i`, or 0 when the alternative fails.
struct ClassifiedText {
  std::vector<unicode::CodePoint> code_points;
  std::vector<CharClass> classes;

  std::size_t size() const { return code_points.size(); }
  char32_t at(std::size_t i) const { return code_points[i].value; }
  bool is(std::size_t i, CharClass c) const { return i < size() && classes[i] == c; }
  bool is_line_break(std::size_t i) const { return i < size() && (at(i) == '\r' || at(i) == '\n'); }
  // End of the run of class `c` that starts at `i` (i itself when at(i) is not of class c).
  std::size_t run_end(std::size_t i, CharClass c) const {
    while (is(i, c))
      ++i;
    return i;
  }
};

CharClass classify(char32_t c) {
  if (unicode::is_letter(c))
    return CharClass::kLetter;
  if (unicode::is_number(c))
    return CharClass::kNumber;
  if (unicode::is_whitespace(c))
    return CharClass::kSpace;
  return CharClass::kOther;
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d). The alternatives start with different letters, so their order
// does not matter.
std::size_t match_contraction(const ClassifiedText& text, std::size_t i) {
  if (text.at(i) != '\'' || i + 1 >= text.size())
    return 0;
  const char32_t first = text.at(i + 1);
  for (char letter : {'s', 't', 'm', 'd'}) {
    if (unicode::equals_ignoring_case(first, letter))
      return 2;
  }
  if (i + 2 >= text.size())
    return 0;
  const char32_t second = text.at(i + 2);
  for (const char* pair : {"re", "ve", "ll"}) {
    if (unicode::equals_ignoring_case(first, pair[0]) &&
        unicode::equals_ignoring_case(second, pair[1])) {
      return 3;
    }
  }
  return 0;
}

// [^\r\n\p{L}\p{N}]?\p{L}+. The optional character cannot be a letter, so a letter at `i`
// starts the run directly. Any other character qualifies only when a letter follows it.
std::size_t match_word(const ClassifiedText& text, std::size_t i) {
  std::size_t start = i;
  if (!text.is(i, CharClass::kLetter)) {
    const bool prefix_allowed = !text.is(i, CharClass::kNumber) && !text.is_line_break(i);
    if (!prefix_allowed || !text.is(i + 1, CharClass::kLetter))
      return 0;
    start = i + 1;
  }
  return text.run_end(start, CharClass::kLetter) - i;
}

// " ?[^\s\p{L}\p{N}]+[\r\n]*". The optional space is taken only when an "other" character
// follows it, because the space itself is excluded from the class.
std::size_t match_symbols(const ClassifiedText& text, std::size_t i) {
  std::size_t start = i;
  if (text.at(i) == ' ' && text.is(i + 1, CharClass::kOther)) {
    start = i + 1;
  } else if (!text.is(i, CharClass::kOther)) {
    return 0;
  }
  std::size_t end = text.run_end(start, CharClass::kOther);
  while (text.is_line_break(end))
    ++end;
  return end - i;
}

// \s*[\r\n]+. The greedy \s* gives back characters until [\r\n]+ matches, so the match ends
// just after the last line break inside the whitespace run.
std::size_t match_line_breaks(const ClassifiedText& text, std::size_t i) {
  const std::size_t run_end = text.run_end(i, CharClass::kSpace);
  for (std::size_t end = run_end; end > i; --end) {
    if (text.is_line_break(end - 1))
      return end - i;
  }
  return 0;
}

// \s+(?!\S). The run is taken whole at the end of the text. Otherwise a non-space follows it,
// so the last whitespace character is given back (to start the next piece, as in " word"),
// which needs a run of at least two.
std::size_t match_trailing_spaces(const ClassifiedText& text, std::size_t i) {
  const std::size_t run_end = text.run_end(i, CharClass::kSpace);
  const std::size_t length = run_end - i;
  if (run_end == text.size())
    return length;
  return length >= 2 ? length - 1 : 0;
}

std::size_t match_at(const ClassifiedText& text, std::size_t i) {
  if (std::size_t n = match_contraction(text, i))
    return n;
  if (std::size_t n = match_word(text, i))
    return n;
  if (text.is(i, CharClass::kNumber))
    return 1;
  if (std::size_t n = match_symbols(text, i))
    return n;
  if (std::size_t n = match_line_breaks(text, i))
    return n;
  if (std::size_t n = match_trailing_spaces(text, i))
    return n;
  // \s+ is the last alternative; every character class is covered by one of the above or by
  // this one, so a non-space never reaches here. Taking one character keeps the loop finite.
  const std::size_t spaces = text.run_end(i, CharClass::kSpace) - i;
  return spaces > 0 ? spaces : 1;
}

}  // namespace

std::vector<std::string_view> split_qwen2_pretokens(std::string_view text) {
  ClassifiedText classified;
  classified.code_points = unicode::decode_utf8(text);
  classified.classes.reserve(classified.size());
  for (const unicode::CodePoint& cp : classified.code_points) {
    classified.classes.push_back(classify(cp.value));
  }

  std::vector<std::string_view> pieces;
  std::size_t i = 0;
  while (i < classified.size()) {
    const std::size_t end = i + match_at(classified, i);
    const std::size_t byte_begin = classified.code_points[i].byte_offset;
    const std::size_t byte_end =
        end < classified.size() ? classified.code_points[end].byte_offset : text.size();
    pieces.push_back(text.substr(byte_begin, byte_end - byte_begin));
    i = end;
  }
  return pieces;
}

}  // namespace ethereal
