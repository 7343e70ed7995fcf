#include "io/image_text.h"

#include <cstdint>

namespace ethereal {
namespace {

// Decodes the character starting at text[*at] and advances *at past it. Returns -1 when the
// bytes there are not a valid UTF-8 sequence.
std::int32_t decode_utf8_char(std::string_view text, std::size_t* at) {
  const auto byte = [&](std::size_t i) { return static_cast<std::uint8_t>(text[i]); };
  const std::uint8_t lead = byte(*at);
  int length = 0;
  std::int32_t value = 0;
  std::int32_t min_value = 0;
  if (lead < 0x80) {
    ++*at;
    return lead;
  }

  // The lead byte gives the sequence length and the top bits of the value.
  if ((lead & 0xE0) == 0xC0) {
    length = 2;
    value = lead & 0x1F;
    min_value = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3;
    value = lead & 0x0F;
    min_value = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4;
    value = lead & 0x07;
    min_value = 0x10000;
  } else {
    return -1;
  }

  if (text.size() - *at < static_cast<std::size_t>(length)) {
    return -1;
  }
  for (int i = 1; i < length; ++i) {
    const std::uint8_t next = byte(*at + i);
    if ((next & 0xC0) != 0x80) {
      return -1;
    }
    value = value << 6 | (next & 0x3F);
  }

  // Reject overlong encodings, values past Unicode's range and UTF-16 surrogates.
  const bool is_surrogate = value >= 0xD800 && value <= 0xDFFF;
  if (value < min_value || value > 0x10FFFF || is_surrogate) {
    return -1;
  }
  *at += length;
  return value;
}

}  // namespace

std::string latin1_to_utf8(std::string_view latin1) {
  std::string utf8;
  utf8.reserve(latin1.size());
  for (const char c : latin1) {
    const auto value = static_cast<std::uint8_t>(c);
    if (value < 0x80) {
      utf8.push_back(c);
    } else {
      utf8.push_back(static_cast<char>(0xC0 | value >> 6));
      utf8.push_back(static_cast<char>(0x80 | (value & 0x3F)));
    }
  }
  return utf8;
}

std::optional<std::string> utf8_to_latin1(std::string_view utf8) {
  std::string latin1;
  latin1.reserve(utf8.size());
  for (std::size_t at = 0; at < utf8.size();) {
    const std::int32_t value = decode_utf8_char(utf8, &at);
    if (value < 0 || value > 0xFF) {
      return std::nullopt;
    }
    latin1.push_back(static_cast<char>(value));
  }
  return latin1;
}

bool is_valid_utf8(std::string_view text) {
  for (std::size_t at = 0; at < text.size();) {
    if (decode_utf8_char(text, &at) < 0) {
      return false;
    }
  }
  return true;
}

}  // namespace ethereal
