// Tests of EXIF orientation parsing: both TIFF byte orders, the JPEG APP1 prefix, malformed
// structures, and the XMP and ImageMagick raw-profile forms that Pillow also reads.
#include "io/image_exif.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ethereal {
namespace {

using Bytes = std::vector<std::uint8_t>;

void append_u16(Bytes& out, std::uint16_t value, bool big_endian) {
  if (big_endian) {
    out.push_back(static_cast<std::uint8_t>(value >> 8));
    out.push_back(static_cast<std::uint8_t>(value));
  } else {
    out.push_back(static_cast<std::uint8_t>(value));
    out.push_back(static_cast<std::uint8_t>(value >> 8));
  }
}

void append_u32(Bytes& out, std::uint32_t value, bool big_endian) {
  if (big_endian) {
    append_u16(out, static_cast<std::uint16_t>(value >> 16), true);
    append_u16(out, static_cast<std::uint16_t>(value), true);
  } else {
    append_u16(out, static_cast<std::uint16_t>(value), false);
    append_u16(out, static_cast<std::uint16_t>(value >> 16), false);
  }
}

struct Entry {
  std::uint16_t tag;
  std::uint16_t type;
  std::uint32_t count;
  std::uint32_t value;  // SHORT values are stored left-justified in the 4-byte field
};

// A TIFF structure with IFD0 at offset 8 holding `entries`.
Bytes tiff(bool big_endian, const std::vector<Entry>& entries) {
  Bytes out;
  out.push_back(big_endian ? 'M' : 'I');
  out.push_back(big_endian ? 'M' : 'I');
  append_u16(out, 42, big_endian);
  append_u32(out, 8, big_endian);
  append_u16(out, static_cast<std::uint16_t>(entries.size()), big_endian);
  for (const Entry& entry : entries) {
    append_u16(out, entry.tag, big_endian);
    append_u16(out, entry.type, big_endian);
    append_u32(out, entry.count, big_endian);
    if (entry.type == 3) {
      append_u16(out, static_cast<std::uint16_t>(entry.value), big_endian);
      append_u16(out, 0, big_endian);
    } else {
      append_u32(out, entry.value, big_endian);
    }
  }
  append_u32(out, 0, big_endian);  // no next IFD
  return out;
}

Bytes orientation_tiff(bool big_endian, std::uint32_t orientation) {
  return tiff(big_endian, {{0x010F, 2, 4, 0x006D6143}, {0x0112, 3, 1, orientation}});
}

TEST(ParseExifOrientation, BothByteOrders) {
  for (const bool big_endian : {false, true}) {
    for (std::uint32_t orientation = 1; orientation <= 8; ++orientation) {
      EXPECT_EQ(parse_exif_orientation(orientation_tiff(big_endian, orientation)),
                static_cast<int>(orientation))
          << (big_endian ? "MM " : "II ") << orientation;
    }
  }
}

TEST(ParseExifOrientation, SkipsExifIdentifier) {
  Bytes segment = {'E', 'x', 'i', 'f', 0, 0};
  const Bytes body = orientation_tiff(true, 6);
  segment.insert(segment.end(), body.begin(), body.end());
  EXPECT_EQ(parse_exif_orientation(segment), 6);
}

TEST(ParseExifOrientation, AcceptsLongType) {
  EXPECT_EQ(parse_exif_orientation(tiff(false, {{0x0112, 4, 1, 8}})), 8);
  EXPECT_EQ(parse_exif_orientation(tiff(true, {{0x0112, 4, 1, 3}})), 3);
}

TEST(ParseExifOrientation, MissingTagIsNullopt) {
  EXPECT_EQ(parse_exif_orientation(tiff(false, {{0x010F, 2, 4, 0}})), std::nullopt);
  EXPECT_EQ(parse_exif_orientation(tiff(true, {})), std::nullopt);
}

TEST(ParseExifOrientation, UnusableTagIsZero) {
  EXPECT_EQ(parse_exif_orientation(tiff(false, {{0x0112, 3, 2, 6}})), 0);  // two values
  EXPECT_EQ(parse_exif_orientation(tiff(false, {{0x0112, 2, 1, 6}})), 0);  // ASCII type
  EXPECT_EQ(parse_exif_orientation(tiff(true, {{0x0112, 3, 1, 9}})), 0);   // out of range
  EXPECT_EQ(parse_exif_orientation(tiff(true, {{0x0112, 3, 1, 0}})), 0);
}

TEST(ParseExifOrientation, MalformedStructuresAreNullopt) {
  EXPECT_EQ(parse_exif_orientation(Bytes{}), std::nullopt);
  EXPECT_EQ(parse_exif_orientation(Bytes{'I', 'I', 42, 0}), std::nullopt);

  Bytes wrong_magic = orientation_tiff(false, 6);
  wrong_magic[2] = 43;
  EXPECT_EQ(parse_exif_orientation(wrong_magic), std::nullopt);

  Bytes wrong_order = orientation_tiff(false, 6);
  wrong_order[0] = 'X';
  EXPECT_EQ(parse_exif_orientation(wrong_order), std::nullopt);

  Bytes far_ifd = orientation_tiff(true, 6);
  far_ifd[4] = 0x7F;  // IFD0 offset far past the end
  EXPECT_EQ(parse_exif_orientation(far_ifd), std::nullopt);
}

TEST(ParseExifOrientation, EveryTruncationIsSafe) {
  // The orientation entry ends at byte 8 + 2 + 2 * 12 = 34. Shorter prefixes must not read
  // past their end (run under AddressSanitizer to see overreads) and cannot find the tag.
  const Bytes full = orientation_tiff(false, 5);
  for (std::size_t size = 0; size < full.size(); ++size) {
    const Bytes prefix(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(size));
    const std::optional<int> orientation = parse_exif_orientation(prefix);
    if (size >= 34) {
      EXPECT_EQ(orientation, 5) << size;
    } else {
      EXPECT_EQ(orientation, std::nullopt) << size;
    }
  }
}

TEST(FindXmpOrientation, AttributeAndElementForms) {
  EXPECT_EQ(find_xmp_orientation(R"(<rdf:Description tiff:Orientation="6"/>)"), 6);
  EXPECT_EQ(find_xmp_orientation("<tiff:Orientation>3</tiff:Orientation>"), 3);
  EXPECT_EQ(find_xmp_orientation("<x tiff:OrientationX=\"6\" tiff:Orientation=\"8\"/>"), 8);
  EXPECT_EQ(find_xmp_orientation("<x tiff:Orientation='6'/>"), std::nullopt);
  EXPECT_EQ(find_xmp_orientation("<x exif:PixelXDimension=\"6\"/>"), std::nullopt);
  EXPECT_EQ(find_xmp_orientation(""), std::nullopt);
}

TEST(DecodeRawExifProfile, SkipsThreeLinesAndWhitespace) {
  EXPECT_EQ(decode_raw_exif_profile("\nexif\n       4\n4578\n6966\n"), (Bytes{'E', 'x', 'i', 'f'}));
  EXPECT_EQ(decode_raw_exif_profile("\nexif\n 2\nA0 ff"), (Bytes{0xA0, 0xFF}));
}

TEST(DecodeRawExifProfile, InvalidHexIsEmpty) {
  EXPECT_TRUE(decode_raw_exif_profile("\nexif\n 2\n4g78\n").empty());
  EXPECT_TRUE(decode_raw_exif_profile("\nexif\n 2\n457\n").empty());  // odd digit count
  EXPECT_TRUE(decode_raw_exif_profile("4578").empty());               // no header lines
}

}  // namespace
}  // namespace ethereal
