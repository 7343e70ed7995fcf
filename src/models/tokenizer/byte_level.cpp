#include "models/tokenizer/byte_level.h"

#include "models/tokenizer/unicode_text.h"

namespace ethereal::byte_level {
namespace {

bool maps_to_itself(unsigned b) {
  return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct Alphabet {
  std::array<char32_t, 256> code_points{};
  std::array<unsigned char, 256> order{};
  // Inverse of code_points over U+0000-U+01FF (all of the alphabet); -1 outside it.
  std::array<int, 512> byte_of_code_point{};

  Alphabet() {
    byte_of_code_point.fill(-1);
    std::size_t next = 0;
    for (unsigned b = 0; b < 256; ++b) {
      if (maps_to_itself(b))
        order[next++] = static_cast<unsigned char>(b);
    }
    char32_t remapped = 0x100;
    for (unsigned b = 0; b < 256; ++b) {
      if (maps_to_itself(b)) {
        code_points[b] = b;
      } else {
        code_points[b] = remapped++;
        order[next++] = static_cast<unsigned char>(b);
      }
      byte_of_code_point[code_points[b]] = static_cast<int>(b);
    }
  }
};

const Alphabet& alphabet() {
  static const Alphabet instance;
  return instance;
}

}  // namespace

const std::array<char32_t, 256>& byte_to_code_point() {
  return alphabet().code_points;
}

const std::array<unsigned char, 256>& bytes_in_alphabet_order() {
  return alphabet().order;
}

std::string encode(std::string_view bytes) {
  const Alphabet& table = alphabet();
  std::string text;
  text.reserve(bytes.size() * 2);
  for (char byte : bytes) {
    unicode::append_utf8(table.code_points[static_cast<unsigned char>(byte)], text);
  }
  return text;
}

std::optional<std::string> decode(std::string_view text) {
  const Alphabet& table = alphabet();
  std::string bytes;
  bytes.reserve(text.size());
  for (std::size_t pos = 0; pos < text.size();) {
    const auto lead = static_cast<unsigned char>(text[pos]);
    // The alphabet lies in U+0021-U+0143, so only one-byte and two-byte sequences up to
    // U+01FF need a table lookup; anything longer is rejected at once.
    char32_t c = 0;
    if (lead < 0x80) {
      c = lead;
      pos += 1;
    } else if (lead >= 0xC2 && lead <= 0xC7 && pos + 1 < text.size() &&
               (static_cast<unsigned char>(text[pos + 1]) & 0xC0) == 0x80) {
      c = ((lead & 0x1F) << 6) | (static_cast<unsigned char>(text[pos + 1]) & 0x3F);
      pos += 2;
    } else {
      return std::nullopt;
    }
    const int byte = table.byte_of_code_point[c];
    if (byte < 0)
      return std::nullopt;
    bytes.push_back(static_cast<char>(byte));
  }
  return bytes;
}

}  // namespace ethereal::byte_level
