// Latin-1 and UTF-8 conversions for PNG text chunks. tEXt and zTXt chunks, and every keyword,
// are Latin-1 (ISO 8859-1), while the library's strings are UTF-8.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace ethereal {

// Converts Latin-1 bytes to UTF-8. Every byte sequence is valid Latin-1.
std::string latin1_to_utf8(std::string_view latin1);

// Converts UTF-8 to Latin-1. Returns std::nullopt when `utf8` is not valid UTF-8 or contains a
// character above U+00FF.
std::optional<std::string> utf8_to_latin1(std::string_view utf8);

// Returns whether `text` is valid UTF-8: no overlong forms, surrogates or values above U+10FFFF.
bool is_valid_utf8(std::string_view text);

}  // namespace ethereal
