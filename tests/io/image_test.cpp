// Tests of the Image types, their conversions and the EXIF orientation transposes.
#include "io/image.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "io/image_exif.h"
#include "runtime/error.h"
#include "support/errors.h"

namespace ethereal {
namespace {

using test_support::error_message;
using ::testing::HasSubstr;

// A 3x2 image whose pixel (x, y) has the single value 10 * y + x, so every position is
// recognisable after a transpose.
Image numbered_image() {
  return Image(3, 2, 1, {0, 1, 2, 10, 11, 12});
}

TEST(Image, ConstructorZeroFillsPixels) {
  const Image image(5, 3, 4);
  EXPECT_EQ(image.width(), 5);
  EXPECT_EQ(image.height(), 3);
  EXPECT_EQ(image.channels(), 4);
  EXPECT_TRUE(image.has_alpha());
  EXPECT_EQ(image.row_size(), 20u);
  ASSERT_EQ(image.pixels().size(), 60u);
  for (const std::uint8_t value : image.pixels()) {
    EXPECT_EQ(value, 0);
  }
}

TEST(Image, AccessorsUseInterleavedRows) {
  Image image(3, 2, 3);
  image.at(2, 1, 1) = 77;
  EXPECT_EQ(image.pixels()[(1 * 3 + 2) * 3 + 1], 77);
  EXPECT_EQ(image.row(1)[2 * 3 + 1], 77);
}

TEST(Image, RejectsInvalidShapes) {
  EXPECT_THAT(error_message<InvalidInputError>([] { Image(0, 4, 3); }),
              HasSubstr("invalid image size 0x4"));
  EXPECT_THAT(error_message<InvalidInputError>([] { Image(4, -1, 3); }),
              HasSubstr("invalid image size 4x-1"));
  EXPECT_THAT(error_message<InvalidInputError>([] { Image(4, 4, 2); }),
              HasSubstr("invalid image channel count 2"));
  EXPECT_THAT(
      error_message<InvalidInputError>([] { Image(2, 2, 3, std::vector<std::uint8_t>(11)); }),
      HasSubstr("expected 12 values, got 11"));
}

TEST(Image, DefaultIsEmpty) {
  const Image image;
  EXPECT_TRUE(image.empty());
  EXPECT_EQ(image.width(), 0);
  EXPECT_TRUE(to_rgb(image).empty());
  EXPECT_TRUE(to_float(image).empty());
  EXPECT_TRUE(to_uint8(ImageF()).empty());
}

TEST(ImageToRgb, ReplicatesGray) {
  const Image rgb = to_rgb(Image(2, 1, 1, {7, 200}));
  EXPECT_EQ(rgb, Image(2, 1, 3, {7, 7, 7, 200, 200, 200}));
}

TEST(ImageToRgb, DropsAlphaWithoutCompositing) {
  // Pillow's convert("RGB") keeps the color of a fully transparent pixel.
  const Image rgb = to_rgb(Image(2, 1, 4, {10, 20, 30, 0, 40, 50, 60, 128}));
  EXPECT_EQ(rgb, Image(2, 1, 3, {10, 20, 30, 40, 50, 60}));
}

TEST(ImageToRgb, KeepsRgb) {
  const Image image(1, 2, 3, {1, 2, 3, 4, 5, 6});
  EXPECT_EQ(to_rgb(image), image);
}

TEST(ImageFloat, RoundTripIsExact) {
  std::vector<std::uint8_t> values(256);
  for (int i = 0; i < 256; ++i) {
    values[i] = static_cast<std::uint8_t>(i);
  }
  const Image image(16, 16, 1, values);
  const ImageF floats = to_float(image);
  EXPECT_EQ(floats.at(15, 15, 0), 255.0f);
  EXPECT_EQ(floats.at(3, 2, 0), 35.0f);
  EXPECT_EQ(to_uint8(floats), image);
}

TEST(ImageFloat, ToUint8RoundsAndClamps) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const ImageF floats(8, 1, 1, {-3.0f, 0.49f, 0.5f, 1.5f, 254.4f, 254.5f, 1000.0f, nan});
  const Image bytes = to_uint8(floats);
  const std::vector<std::uint8_t> expected = {0, 0, 1, 2, 254, 255, 255, 0};
  EXPECT_EQ(std::vector<std::uint8_t>(bytes.pixels().begin(), bytes.pixels().end()), expected);
}

// Expected pixel values (10 * source y + source x) of each orientation applied to
// numbered_image(), from the definitions in io/image_exif.h, row by row.
struct OrientationCase {
  int orientation;
  int width;
  int height;
  std::vector<std::uint8_t> values;
};

TEST(ApplyExifOrientation, AllEightOrientations) {
  // Source:  0  1  2
  //         10 11 12
  const std::vector<OrientationCase> cases = {
      {1, 3, 2, {0, 1, 2, 10, 11, 12}}, {2, 3, 2, {2, 1, 0, 12, 11, 10}},
      {3, 3, 2, {12, 11, 10, 2, 1, 0}}, {4, 3, 2, {10, 11, 12, 0, 1, 2}},
      {5, 2, 3, {0, 10, 1, 11, 2, 12}}, {6, 2, 3, {10, 0, 11, 1, 12, 2}},
      {7, 2, 3, {12, 2, 11, 1, 10, 0}}, {8, 2, 3, {2, 12, 1, 11, 0, 10}},
  };
  for (const OrientationCase& expected : cases) {
    SCOPED_TRACE("orientation " + std::to_string(expected.orientation));
    const Image out = apply_exif_orientation(numbered_image(), expected.orientation);
    EXPECT_EQ(out, Image(expected.width, expected.height, 1, expected.values));
  }
}

TEST(ApplyExifOrientation, MovesAllChannelsTogether) {
  const Image image(2, 1, 4, {1, 2, 3, 4, 5, 6, 7, 8});
  EXPECT_EQ(apply_exif_orientation(image, 6), Image(1, 2, 4, {1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(apply_exif_orientation(image, 2), Image(2, 1, 4, {5, 6, 7, 8, 1, 2, 3, 4}));
}

TEST(ApplyExifOrientation, InvalidValuesLeaveImageUnchanged) {
  for (const int orientation : {0, 9, -1, 100}) {
    EXPECT_EQ(apply_exif_orientation(numbered_image(), orientation), numbered_image());
  }
}

TEST(ApplyExifOrientation, InverseOrientationsRestoreImage) {
  // 6 and 8 are quarter turns in opposite directions; 2, 3, 4, 5 and 7 are their own inverse.
  const Image image = numbered_image();
  EXPECT_EQ(apply_exif_orientation(apply_exif_orientation(image, 6), 8), image);
  for (const int orientation : {2, 3, 4, 5, 7}) {
    EXPECT_EQ(apply_exif_orientation(apply_exif_orientation(image, orientation), orientation),
              image);
  }
}

}  // namespace
}  // namespace ethereal
