#include "models/tokenizer/unicode_text.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uchar.h>

#include <fmt/format.h>

#include "runtime/error.h"

namespace ethereal::unicode {
namespace {

// Result of reading one UTF-8 sequence. For an ill-formed sequence `length` is the length of
// its maximal subpart: the longest prefix that could still start a well-formed sequence
// (at least 1), which is what one U+FFFD replaces.
struct Utf8Read {
  bool valid = false;
  char32_t value = 0;
  std::size_t length = 1;
};

// Reads the sequence starting at text[pos] following the well-formed byte table of the
// Unicode standard (chapter 3, table 3-7): no overlongs, no surrogates, nothing over U+10FFFF.
Utf8Read read_utf8(std::string_view text, std::size_t pos) {
  const auto lead = static_cast<unsigned char>(text[pos]);
  if (lead < 0x80) {
    return {true, lead, 1};
  }

  std::size_t length = 0;
  unsigned char second_min = 0x80;
  unsigned char second_max = 0xBF;
  char32_t value = 0;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
    value = lead & 0x1F;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    value = lead & 0x0F;
    if (lead == 0xE0)
      second_min = 0xA0;
    if (lead == 0xED)
      second_max = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    value = lead & 0x07;
    if (lead == 0xF0)
      second_min = 0x90;
    if (lead == 0xF4)
      second_max = 0x8F;
  } else {
    return {false, 0, 1};
  }

  for (std::size_t i = 1; i < length; ++i) {
    if (pos + i >= text.size()) {
      return {false, 0, i};
    }
    const auto byte = static_cast<unsigned char>(text[pos + i]);
    const unsigned char min = i == 1 ? second_min : 0x80;
    const unsigned char max = i == 1 ? second_max : 0xBF;
    if (byte < min || byte > max) {
      return {false, 0, i};
    }
    value = (value << 6) | (byte & 0x3F);
  }
  return {true, value, length};
}

bool is_ascii(std::string_view text) {
  for (char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80)
      return false;
  }
  return true;
}

const icu::Normalizer2& nfc_normalizer() {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* normalizer = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status) || normalizer == nullptr) {
    throw Error(
        fmt::format("ICU could not load its NFC normalization data ({}); check the ICU "
                    "installation (Debian package libicu72)",
                    u_errorName(status)));
  }
  return *normalizer;
}

}  // namespace

void check_utf8(std::string_view text, std::string_view description) {
  std::size_t pos = 0;
  while (pos < text.size()) {
    const Utf8Read read = read_utf8(text, pos);
    if (!read.valid) {
      throw InvalidInputError(fmt::format(
          "{} is not valid UTF-8: ill-formed byte sequence at byte offset {} (byte 0x{:02X}); "
          "convert the text to UTF-8",
          description, pos, static_cast<unsigned char>(text[pos])));
    }
    pos += read.length;
  }
}

std::vector<CodePoint> decode_utf8(std::string_view valid_text) {
  std::vector<CodePoint> code_points;
  code_points.reserve(valid_text.size());
  std::size_t pos = 0;
  while (pos < valid_text.size()) {
    const Utf8Read read = read_utf8(valid_text, pos);
    code_points.push_back({read.valid ? read.value : char32_t{0xFFFD}, pos});
    pos += read.length;
  }
  return code_points;
}

void append_utf8(char32_t c, std::string& out) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string repair_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    const Utf8Read read = read_utf8(bytes, pos);
    if (read.valid) {
      out.append(bytes.substr(pos, read.length));
    } else {
      append_utf8(0xFFFD, out);
    }
    pos += read.length;
  }
  return out;
}

std::string normalize_nfc(std::string_view valid_text) {
  if (is_ascii(valid_text)) {
    return std::string(valid_text);
  }

  const icu::Normalizer2& normalizer = nfc_normalizer();
  const icu::StringPiece source(valid_text.data(), static_cast<std::int32_t>(valid_text.size()));
  UErrorCode status = U_ZERO_ERROR;
  if (normalizer.isNormalizedUTF8(source, status) && U_SUCCESS(status)) {
    return std::string(valid_text);
  }

  status = U_ZERO_ERROR;
  std::string normalized;
  icu::StringByteSink<std::string> sink(&normalized, static_cast<std::int32_t>(valid_text.size()));
  normalizer.normalizeUTF8(0, source, sink, nullptr, status);
  if (U_FAILURE(status)) {
    throw Error(fmt::format("ICU NFC normalization failed ({}) on {} bytes of text",
                            u_errorName(status), valid_text.size()));
  }
  return normalized;
}

bool is_letter(char32_t c) {
  if (c < 0x80) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  }
  return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_L_MASK) != 0;
}

bool is_number(char32_t c) {
  if (c < 0x80) {
    return c >= '0' && c <= '9';
  }
  return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_N_MASK) != 0;
}

bool is_whitespace(char32_t c) {
  if (c < 0x80) {
    return c == ' ' || (c >= '\t' && c <= '\r');
  }
  return u_isUWhiteSpace(static_cast<UChar32>(c));
}

std::size_t skip_whitespace_forward(std::string_view valid_text, std::size_t pos) {
  while (pos < valid_text.size()) {
    const Utf8Read read = read_utf8(valid_text, pos);
    if (!read.valid || !is_whitespace(read.value))
      break;
    pos += read.length;
  }
  return pos;
}

std::size_t skip_whitespace_backward(std::string_view valid_text, std::size_t begin,
                                     std::size_t end) {
  while (end > begin) {
    // Step back over continuation bytes (10xxxxxx) to the lead byte of the previous character.
    std::size_t start = end - 1;
    while (start > begin && (static_cast<unsigned char>(valid_text[start]) & 0xC0) == 0x80) {
      --start;
    }
    const Utf8Read read = read_utf8(valid_text, start);
    if (!read.valid || !is_whitespace(read.value))
      break;
    end = start;
  }
  return end;
}

bool equals_ignoring_case(char32_t c, char lower) {
  if (c < 0x80) {
    const char32_t folded = (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
    return folded == static_cast<char32_t>(lower);
  }
  return u_foldCase(static_cast<UChar32>(c), U_FOLD_CASE_DEFAULT) == static_cast<UChar32>(lower);
}

}  // namespace ethereal::unicode
