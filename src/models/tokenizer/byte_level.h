// The byte-level alphabet of GPT-2 style BPE vocabularies.
//
// Byte-level BPE works on raw UTF-8 bytes, but vocabulary files store tokens as text, so each
// of the 256 byte values is shown as one printable character. Bytes 0x21-0x7E, 0xA1-0xAC and
// 0xAE-0xFF stand for themselves (as Latin-1 code points). The remaining 68 bytes map, in
// increasing order, to U+0100 onwards, so the space 0x20 is written "Ġ" (U+0120) and the line
// feed 0x0A "Ċ" (U+010A).
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>

namespace ethereal::byte_level {

// The code point that stands for each byte value.
const std::array<char32_t, 256>& byte_to_code_point();

// The byte values in the order of GPT-2's listing: the self-mapped bytes first, then the
// remapped ones. Qwen2 vocabularies give the byte symbols ids 0-255 in this order.
const std::array<unsigned char, 256>& bytes_in_alphabet_order();

// Returns the byte-level text (UTF-8) that spells `bytes`, as vocabulary files store it.
std::string encode(std::string_view bytes);

// Returns the raw bytes spelled by byte-level text, or nothing when `text` is not well-formed
// UTF-8 or contains a character outside the 256-character alphabet.
std::optional<std::string> decode(std::string_view text);

}  // namespace ethereal::byte_level
