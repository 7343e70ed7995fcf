// Tests of read_image on the files made by tools/make_image_test_data.py. PNG pixels follow
// formulas that the script documents and that are recomputed here; JPEG pixels are compared
// with Pillow 9.4's decodes of the same files, stored next to them.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "image_test_util.h"
#include "io/image_exif.h"
#include "io/image_file.h"
#include "runtime/error.h"
#include "support/errors.h"
#include "support/files.h"

namespace ethereal {
namespace {

using image_testing::image_data;
using test_support::error_message;
using test_support::read_file;
using test_support::TemporaryDirectory;
using test_support::write_file;
using ::testing::AllOf;
using ::testing::HasSubstr;

// The generator's formulas, for the 7x5 PNG files.
constexpr int kWidth = 7;
constexpr int kHeight = 5;
int value(int x, int y, int c) {
  return (40 * x + 50 * y + 70 * c) % 256;
}
int alpha(int x, int y) {
  return (30 * x + 20 * y + 15) % 256;
}
std::array<int, 3> palette(int i) {
  return {(37 * i) % 256, (91 * i) % 256, (53 * i) % 256};
}

using Pixel = std::vector<int>;
using PixelFormula = std::function<Pixel(int x, int y)>;

Pixel gray(int v) {
  return {v};
}
Pixel gray_as_rgba(int v, int a) {
  return {v, v, v, a};
}
Pixel rgb_formula(int x, int y) {
  return {value(x, y, 0), value(x, y, 1), value(x, y, 2)};
}
Pixel rgba_formula(int x, int y) {
  return {value(x, y, 0), value(x, y, 1), value(x, y, 2), alpha(x, y)};
}

void expect_pixels(const Image& image, int channels, const PixelFormula& formula) {
  ASSERT_EQ(image.width(), kWidth);
  ASSERT_EQ(image.height(), kHeight);
  ASSERT_EQ(image.channels(), channels);
  for (int y = 0; y < kHeight; ++y) {
    for (int x = 0; x < kWidth; ++x) {
      const Pixel expected = formula(x, y);
      for (int c = 0; c < channels; ++c) {
        ASSERT_EQ(image.at(x, y, c), expected[c])
            << "pixel (" << x << ", " << y << ") channel " << c;
      }
    }
  }
}

struct PngCase {
  const char* file;
  int channels;
  PixelFormula formula;
};

TEST(ReadPng, EveryColorTypeAndBitDepth) {
  const std::vector<PngCase> cases = {
      {"gray1.png", 1, [](int x, int y) { return gray((x + y) % 2 * 255); }},
      {"gray2.png", 1, [](int x, int y) { return gray((x + 2 * y) % 4 * 85); }},
      {"gray4.png", 1, [](int x, int y) { return gray((x + 3 * y) % 16 * 17); }},
      {"gray8.png", 1, [](int x, int y) { return gray(value(x, y, 0)); }},
      // 16-bit samples keep their high byte, which the generator sets to value().
      {"gray16.png", 1, [](int x, int y) { return gray(value(x, y, 0)); }},
      {"graya8.png", 4, [](int x, int y) { return gray_as_rgba(value(x, y, 0), alpha(x, y)); }},
      {"graya16.png", 4, [](int x, int y) { return gray_as_rgba(value(x, y, 0), alpha(x, y)); }},
      {"rgb8.png", 3, rgb_formula},
      {"rgb16.png", 3, rgb_formula},
      {"rgba8.png", 4, rgba_formula},
      {"rgba16.png", 4, rgba_formula},
      {"interlaced_rgb8.png", 3, rgb_formula},
      {"interlaced_rgba16.png", 4, rgba_formula},
      {"interlaced_gray1.png", 1, [](int x, int y) { return gray((x + y) % 2 * 255); }},
  };
  for (const PngCase& test_case : cases) {
    SCOPED_TRACE(test_case.file);
    const ImageFile file = read_image_file(image_data(test_case.file));
    EXPECT_EQ(file.format, ImageFormat::kPng);
    EXPECT_EQ(file.exif_orientation, 1);
    expect_pixels(file.image, test_case.channels, test_case.formula);
  }
}

TEST(ReadPng, TransparentColorBecomesAlpha) {
  // The tRNS chunk names the color of pixel (2, 1); pixels of that color get alpha 0.
  expect_pixels(read_image(image_data("gray8_trns.png")), 4, [](int x, int y) {
    const int v = value(x, y, 0);
    return gray_as_rgba(v, v == value(2, 1, 0) ? 0 : 255);
  });
  expect_pixels(read_image(image_data("rgb8_trns.png")), 4, [](int x, int y) {
    Pixel pixel = rgb_formula(x, y);
    pixel.push_back(pixel == rgb_formula(2, 1) ? 0 : 255);
    return pixel;
  });
}

TEST(ReadPng, PaletteIsExpanded) {
  expect_pixels(read_image(image_data("palette4.png")), 3, [](int x, int y) {
    const std::array<int, 3> color = palette((x + kWidth * y) % 16);
    return Pixel(color.begin(), color.end());
  });
  // 35 entries, of which the first 20 have tRNS alpha (29 i) mod 256; the others are opaque.
  expect_pixels(read_image(image_data("palette8_trns.png")), 4, [](int x, int y) {
    const int index = (x + kWidth * y) % 35;
    const std::array<int, 3> color = palette(index);
    return Pixel{color[0], color[1], color[2], index < 20 ? (29 * index) % 256 : 255};
  });
}

TEST(ReadPng, TextChunksBeforeAndAfterImageData) {
  const std::vector<PngTextChunk> expected = {
      {"Title", "Caf\u00e9 test"},                    // tEXt, Latin-1
      {"Comment", "zipped text"},                     // zTXt
      {"Prompt", "\u732b\u304c\u5ea7\u308b"},         // iTXt, UTF-8
      {"Software", "tools/make_image_test_data.py"},  // tEXt after IDAT
  };
  EXPECT_EQ(read_png_text(image_data("text_chunks.png")), expected);
  expect_pixels(read_image(image_data("text_chunks.png")), 3, rgb_formula);
}

TEST(ReadPng, OrientationFromExifChunkRawProfileAndXmp) {
  const Image upright = read_image(image_data("rgb8.png"));
  const std::vector<std::pair<const char*, int>> cases = {
      {"orientation6_exif_chunk.png", 6},
      {"orientation3_raw_profile.png", 3},
      {"orientation8_xmp.png", 8},
  };
  for (const auto& [name, orientation] : cases) {
    SCOPED_TRACE(name);
    const ImageFile file = read_image_file(image_data(name));
    EXPECT_EQ(file.exif_orientation, orientation);
    EXPECT_EQ(file.stored_width, kWidth);
    EXPECT_EQ(file.stored_height, kHeight);
    EXPECT_EQ(file.image, apply_exif_orientation(upright, orientation));
  }
}

// Returns the largest absolute difference between the image's values and `reference`.
int max_difference(const Image& image, const std::string& reference) {
  EXPECT_EQ(image.pixels().size(), reference.size());
  int worst = 0;
  for (std::size_t i = 0; i < reference.size() && i < image.pixels().size(); ++i) {
    worst = std::max(worst, std::abs(image.pixels()[i] - static_cast<std::uint8_t>(reference[i])));
  }
  return worst;
}

// The references come from Debian 12's Pillow, which decodes with the same system
// libjpeg-turbo (2.1.5) and the same default settings as read_image. The outputs are therefore
// expected to be identical, so the tolerance is 0.
TEST(ReadJpeg, MatchesPillowDecode) {
  const std::vector<std::tuple<const char*, const char*, int>> cases = {
      {"photo.jpg", "photo.rgb", 3},
      {"progressive.jpg", "progressive.rgb", 3},
      {"gray.jpg", "gray.gray", 1},
  };
  for (const auto& [jpeg, reference, channels] : cases) {
    SCOPED_TRACE(jpeg);
    const ImageFile file = read_image_file(image_data(jpeg));
    EXPECT_EQ(file.format, ImageFormat::kJpeg);
    EXPECT_EQ(file.exif_orientation, 1);
    EXPECT_TRUE(file.text.empty());
    EXPECT_EQ(file.image.width(), 37);
    EXPECT_EQ(file.image.height(), 23);
    ASSERT_EQ(file.image.channels(), channels);
    EXPECT_EQ(max_difference(file.image, read_file(image_data(reference))), 0);
  }
}

TEST(ReadJpeg, CmykConvertedLikePillow) {
  const Image image = read_image(image_data("cmyk.jpg"));
  EXPECT_EQ(image.width(), 21);
  EXPECT_EQ(image.height(), 13);
  ASSERT_EQ(image.channels(), 3);
  EXPECT_EQ(max_difference(image, read_file(image_data("cmyk.rgb"))), 0);
}

// The orientation files hold the same 48x32 JPEG of four flat quadrants (red top-left, green
// top-right, blue bottom-left, white bottom-right) with different EXIF orientations.
TEST(ReadJpeg, AllEightExifOrientations) {
  using Rgb = std::array<int, 3>;
  constexpr Rgb kRed = {255, 0, 0}, kGreen = {0, 255, 0}, kBlue = {0, 0, 255},
                kWhite = {255, 255, 255};
  // Colors of the output quadrants: top-left, top-right, bottom-left, bottom-right.
  const std::array<std::array<Rgb, 4>, 9> expected_quadrants = {{
      {},
      {kRed, kGreen, kBlue, kWhite},  // 1: upright
      {kGreen, kRed, kWhite, kBlue},  // 2: mirrored left-right
      {kWhite, kBlue, kGreen, kRed},  // 3: half turn
      {kBlue, kWhite, kRed, kGreen},  // 4: mirrored top-bottom
      {kRed, kBlue, kGreen, kWhite},  // 5: transposed
      {kBlue, kRed, kWhite, kGreen},  // 6: turned clockwise
      {kWhite, kGreen, kBlue, kRed},  // 7: transversed
      {kGreen, kWhite, kRed, kBlue},  // 8: turned counter-clockwise
  }};
  const Image stored = read_image(image_data("orientation1.jpg"));
  for (int orientation = 1; orientation <= 8; ++orientation) {
    SCOPED_TRACE("orientation " + std::to_string(orientation));
    const ImageFile file =
        read_image_file(image_data("orientation" + std::to_string(orientation) + ".jpg"));
    EXPECT_EQ(file.exif_orientation, orientation);
    EXPECT_EQ(file.stored_width, 48);
    EXPECT_EQ(file.stored_height, 32);
    const bool swapped = orientation >= 5;
    const int width = swapped ? 32 : 48;
    const int height = swapped ? 48 : 32;
    ASSERT_EQ(file.image.width(), width);
    ASSERT_EQ(file.image.height(), height);
    EXPECT_EQ(file.image, apply_exif_orientation(stored, orientation));

    // Quadrant centers, with a tolerance of 16 levels for JPEG compression.
    const std::array<std::array<int, 2>, 4> centers = {{{width / 4, height / 4},
                                                        {3 * width / 4, height / 4},
                                                        {width / 4, 3 * height / 4},
                                                        {3 * width / 4, 3 * height / 4}}};
    for (int q = 0; q < 4; ++q) {
      for (int c = 0; c < 3; ++c) {
        EXPECT_NEAR(file.image.at(centers[q][0], centers[q][1], c),
                    expected_quadrants[orientation][q][c], 16)
            << "quadrant " << q << " channel " << c;
      }
    }
  }
}

TEST(ReadPngText, RejectsJpeg) {
  const auto path = image_data("photo.jpg");
  EXPECT_THAT(error_message<InvalidInputError>([&] { read_png_text(path); }),
              AllOf(HasSubstr(path.string()), HasSubstr("is a JPEG image"),
                    HasSubstr("only PNG files carry text chunks")));
}

// Each error names the file, the problem and what to do.
void expect_read_error(const std::filesystem::path& path, const std::vector<std::string>& parts) {
  const std::string message = error_message<InvalidInputError>([&] { read_image(path); });
  EXPECT_THAT(message, HasSubstr("failed to read image '" + path.string() + "'"));
  for (const std::string& part : parts) {
    EXPECT_THAT(message, HasSubstr(part));
  }
}

TEST(ReadImageErrors, MissingFileAndDirectory) {
  TemporaryDirectory scratch;
  expect_read_error(scratch / "missing.png", {"the file does not exist", "Check the path"});
  expect_read_error(scratch.path(), {"is a directory", "Pass the path of an image file"});
}

TEST(ReadImageErrors, EmptyFile) {
  TemporaryDirectory scratch;
  write_file(scratch / "empty.png", "");
  expect_read_error(scratch / "empty.png", {"the file is empty (0 bytes)", "Re-export"});
}

TEST(ReadImageErrors, TruncatedFiles) {
  expect_read_error(image_data("truncated.png"),
                    {"the file is truncated", "PNG data", "re-export or re-download"});
  expect_read_error(image_data("truncated.jpg"),
                    {"the file is truncated", "JPEG data", "re-export or re-download"});
  TemporaryDirectory scratch;
  write_file(scratch / "signature.png", "\x89PNG\r");
  expect_read_error(scratch / "signature.png", {"fewer than the 8-byte PNG signature"});
}

TEST(ReadImageErrors, CorruptData) {
  expect_read_error(image_data("bad_crc.png"), {"the PNG data is invalid", "CRC"});
  // A JPEG whose frame header claims 7-bit samples.
  std::string jpeg = read_file(image_data("photo.jpg"));
  const std::size_t frame = jpeg.find("\xFF\xC0");
  ASSERT_NE(frame, std::string::npos);
  jpeg[frame + 4] = 7;  // marker (2), length (2), sample precision (1)
  TemporaryDirectory scratch;
  write_file(scratch / "precision.jpg", jpeg);
  expect_read_error(scratch / "precision.jpg",
                    {"the JPEG data is invalid (libjpeg: Unsupported JPEG data precision 7)"});
}

TEST(ReadImageErrors, NonImageFile) {
  expect_read_error(
      image_data("not_an_image.txt"),
      {"not a PNG or JPEG image", "starts with bytes 54 68 69 73", "Pass a PNG or JPEG file"});
}

TEST(ReadImageErrors, OtherFormatsAreNamed) {
  TemporaryDirectory scratch;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"GIF", std::string("GIF89a\x01\x00\x01\x00", 10)},
      {"WebP", std::string("RIFF\x24\x00\x00\x00WEBPVP8 ", 16)},
      {"BMP", std::string("BM\x3a\x00\x00\x00\x00\x00", 8)},
      {"TIFF", std::string("II*\x00\x08\x00\x00\x00", 8)},
      {"HEIF", std::string("\x00\x00\x00\x18"
                           "ftypheic",
                           12)},
  };
  for (const auto& [format, bytes] : cases) {
    SCOPED_TRACE(format);
    const auto path = scratch / ("image." + format);
    write_file(path, bytes);
    expect_read_error(path, {"the file is a " + format + " image",
                             "only PNG and JPEG are supported", "Convert the image to PNG"});
  }
}

TEST(ReadImageErrors, FormatFromContentNotExtension) {
  TemporaryDirectory scratch;
  const auto path = scratch / "actually_png.jpg";
  write_file(path, read_file(image_data("rgb8.png")));
  EXPECT_EQ(read_image_file(path).format, ImageFormat::kPng);
}

TEST(ReadImageErrors, SizeLimitsCheckedBeforeDecoding) {
  expect_read_error(image_data("huge_side.png"),
                    {"40000x10 pixels", "limit of 30000 pixels per side", "Downscale"});
  expect_read_error(image_data("huge_side.jpg"), {"40000x23 pixels", "limit of 30000"});
  expect_read_error(image_data("huge_area.png"),
                    {"20000x20000 = 400000000 pixels", "limit of 250000000 pixels"});
}

}  // namespace
}  // namespace ethereal
