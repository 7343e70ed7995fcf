// Unicode helpers of the tokenizer: UTF-8 checking and decoding, NFC normalisation and the
// character classes that the pre-tokenisation pattern uses.
//
// The character classes follow Oniguruma, the regex engine that HuggingFace tokenizers uses
// for its Split pre-tokenizer: \p{L} is general category L (Lu, Ll, Lt, Lm, Lo), \p{N} is N
// (Nd, Nl, No) and \s is the Unicode White_Space property. Category data comes from ICU, so
// characters added in a Unicode version newer than the linked ICU are classified as unassigned.
//
// NOTE: the Qwen2 split built on these classes agreed with Oniguruma 6.9.8 (Debian 12) on 2.4
// million test strings, except on characters new in Unicode 15.0 (such as CJK Extension H),
// which ICU 72 classifies and Oniguruma 6.9.8 treats as unassigned. A tokenizer whose Oniguruma has
// older tables than the linked ICU can split text with such characters differently.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace ethereal::unicode {

// One decoded code point and where its UTF-8 bytes start in the text.
struct CodePoint {
  char32_t value = 0;
  std::size_t byte_offset = 0;
};

// Throws InvalidInputError naming `description` and the byte offset of the first ill-formed
// sequence (stray continuation byte, truncated or overlong sequence, surrogate, value over
// U+10FFFF).
void check_utf8(std::string_view text, std::string_view description);

// Decodes well-formed UTF-8 (as accepted by check_utf8) into code points.
std::vector<CodePoint> decode_utf8(std::string_view valid_text);

// Appends the UTF-8 encoding of a Unicode scalar value.
void append_utf8(char32_t code_point, std::string& out);

// Returns `bytes` with every maximal ill-formed subsequence replaced by U+FFFD, the
// replacement rule of the Unicode standard (and of Rust's String::from_utf8_lossy).
std::string repair_utf8(std::string_view bytes);

// Returns the NFC form of well-formed UTF-8 text. ASCII text is returned unchanged without
// calling ICU.
std::string normalize_nfc(std::string_view valid_text);

bool is_letter(char32_t c);      // \p{L}
bool is_number(char32_t c);      // \p{N}
bool is_whitespace(char32_t c);  // \s: White_Space

// Returns the byte offset just past the whitespace run that starts at byte `pos` of
// well-formed UTF-8 text (`pos` itself when no whitespace starts there).
std::size_t skip_whitespace_forward(std::string_view valid_text, std::size_t pos);
// Returns the byte offset where the whitespace run ending at byte `end` starts, looking no
// further back than byte `begin` (`end` itself when the character before it is no whitespace).
std::size_t skip_whitespace_backward(std::string_view valid_text, std::size_t begin,
                                     std::size_t end);

// True when `c` equals the ASCII lowercase letter `lower` under simple case folding, the rule of
// a case-insensitive regex: 's' matches 's', 'S' and U+017F LATIN SMALL LETTER LONG S.
bool equals_ignoring_case(char32_t c, char lower);

}  // namespace ethereal::unicode
