#include "models/tokenizer/byte_level.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

#include "models/tokenizer/unicode_text.h"

namespace ethereal {
namespace {

TEST(ByteLevel, AlphabetIsABijection) {
  const auto& code_points = byte_level::byte_to_code_point();
  const std::set<char32_t> distinct(code_points.begin(), code_points.end());
  EXPECT_EQ(distinct.size(), 256u);
  EXPECT_EQ(code_points[' '], U'\u0120');
  EXPECT_EQ(code_points['\n'], U'\u010a');
  EXPECT_EQ(code_points['a'], U'a');
  EXPECT_EQ(code_points[0xAD], U'\u0143');  // the last remapped byte
  EXPECT_EQ(code_points[0xFF], U'\u00ff');
}

TEST(ByteLevel, AlphabetOrderStartsWithPrintableBytes) {
  const auto& order = byte_level::bytes_in_alphabet_order();
  EXPECT_EQ(order[0], '!');
  EXPECT_EQ(order[64], 'a');
  EXPECT_EQ(order[188], 0x00);  // first remapped byte
  EXPECT_EQ(order[220], ' ');
  EXPECT_EQ(order[255], 0xAD);
}

TEST(ByteLevel, EncodeDecodeRoundTripsAllBytes) {
  std::string bytes;
  for (int b = 0; b < 256; ++b)
    bytes.push_back(static_cast<char>(b));
  const std::string text = byte_level::encode(bytes);
  EXPECT_NO_THROW(unicode::check_utf8(text, "byte-level text"));
  EXPECT_EQ(byte_level::decode(text), bytes);
  EXPECT_EQ(byte_level::encode(" the\n"), "\u0120the\u010a");
}

TEST(ByteLevel, DecodeRejectsForeignCharacters) {
  EXPECT_EQ(byte_level::decode("\u4e2d"), std::nullopt);  // not in the alphabet
  EXPECT_EQ(byte_level::decode(" "), std::nullopt);       // the space is spelled "Ġ"
  EXPECT_EQ(byte_level::decode("\u00ad"), std::nullopt);  // soft hyphen byte is remapped
  EXPECT_EQ(byte_level::decode("\xC4"), std::nullopt);    // truncated UTF-8
  EXPECT_EQ(byte_level::decode("\u0144"), std::nullopt);  // just past the alphabet
}

TEST(Utf8Repair, ReplacesMaximalSubparts) {
  // Each maximal ill-formed subpart becomes one U+FFFD; "\xE4\xB8" is one subpart.
  EXPECT_EQ(unicode::repair_utf8("a\xE4\xB8z"), "a\ufffdz");
  EXPECT_EQ(unicode::repair_utf8("\x80\x80"), "\ufffd\ufffd");
  EXPECT_EQ(unicode::repair_utf8("\xC0\xAF"), "\ufffd\ufffd");
  EXPECT_EQ(unicode::repair_utf8("ok \u00e9"), "ok \u00e9");
}

}  // namespace
}  // namespace ethereal
