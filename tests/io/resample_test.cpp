// Tests of resize, resize_float and resize_area. The Pillow cases come from
// tools/make_resample_reference.py (Pillow 9.4); tests/data/io/resample/manifest.txt lists them.
#include "io/resample.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "image_test_util.h"
#include "runtime/error.h"
#include "support/errors.h"
#include "support/files.h"

namespace ethereal {
namespace {

using image_testing::resample_data;
using test_support::error_message;
using test_support::read_file;
using ::testing::HasSubstr;

struct ReferenceCase {
  std::string kind;  // rgb, rgba, gray or float
  std::string filter;
  int width = 0;
  int height = 0;
  std::string file;
};

struct ReferenceInput {
  int width = 0;
  int height = 0;
  std::string file;
};

struct Manifest {
  std::map<std::string, ReferenceInput> inputs;
  std::vector<ReferenceCase> cases;
};

Manifest read_manifest() {
  Manifest manifest;
  std::istringstream lines(read_file(resample_data("manifest.txt")));
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] == '#') {
      continue;
    }
    std::istringstream fields(line);
    std::string kind;
    fields >> kind;
    if (kind == "input") {
      // input <kind> - <width> <height> <file>
      std::string input_kind;
      std::string unused;
      ReferenceInput input;
      fields >> input_kind >> unused >> input.width >> input.height >> input.file;
      manifest.inputs[input_kind] = input;
    } else {
      ReferenceCase entry;
      entry.kind = kind;
      fields >> entry.filter >> entry.width >> entry.height >> entry.file;
      manifest.cases.push_back(entry);
    }
  }
  return manifest;
}

ResampleFilter filter_named(const std::string& name) {
  for (const ResampleFilter filter : {ResampleFilter::kBox, ResampleFilter::kBilinear,
                                      ResampleFilter::kBicubic, ResampleFilter::kLanczos}) {
    if (name == resample_filter_name(filter)) {
      return filter;
    }
  }
  throw std::runtime_error("unknown filter in manifest: " + name);
}

int channels_of(const std::string& kind) {
  if (kind == "rgb") {
    return 3;
  }
  return kind == "rgba" ? 4 : 1;
}

Image load_u8(const std::string& file, int width, int height, int channels) {
  const std::string bytes = read_file(resample_data(file));
  return Image(width, height, channels, std::vector<std::uint8_t>(bytes.begin(), bytes.end()));
}

// Raw little-endian float32 (the test machines are little-endian).
ImageF load_f32(const std::string& file, int width, int height) {
  const std::string bytes = read_file(resample_data(file));
  std::vector<float> values(bytes.size() / sizeof(float));
  std::memcpy(values.data(), bytes.data(), values.size() * sizeof(float));
  return ImageF(width, height, 1, std::move(values));
}

TEST(ResizePillowReference, ManifestCoversAllFiltersAndKinds) {
  const Manifest manifest = read_manifest();
  std::set<std::string> filters;
  std::set<std::string> kinds;
  for (const ReferenceCase& entry : manifest.cases) {
    filters.insert(entry.filter);
    kinds.insert(entry.kind);
  }
  EXPECT_EQ(filters, (std::set<std::string>{"box", "bilinear", "bicubic", "lanczos"}));
  EXPECT_EQ(kinds, (std::set<std::string>{"rgb", "rgba", "gray", "float"}));
  EXPECT_EQ(manifest.inputs.size(), 4u);
  EXPECT_EQ(manifest.cases.size(), 76u);
}

// 8-bit outputs must equal Pillow's byte for byte: the fixed-point arithmetic is integer and
// the double-precision weights round to the same fixed-point values.
TEST(ResizePillowReference, EightBitMatchesExactly) {
  const Manifest manifest = read_manifest();
  int compared = 0;
  for (const ReferenceCase& entry : manifest.cases) {
    if (entry.kind == "float") {
      continue;
    }
    SCOPED_TRACE(entry.file);
    const ReferenceInput& input = manifest.inputs.at(entry.kind);
    const int channels = channels_of(entry.kind);
    const Image source = load_u8(input.file, input.width, input.height, channels);
    const Image expected = load_u8(entry.file, entry.width, entry.height, channels);
    const Image actual = resize(source, entry.width, entry.height, filter_named(entry.filter));
    ASSERT_EQ(actual.width(), entry.width);
    ASSERT_EQ(actual.height(), entry.height);
    int mismatches = 0;
    for (std::size_t i = 0; i < expected.pixels().size(); ++i) {
      if (actual.pixels()[i] != expected.pixels()[i] && ++mismatches <= 3) {
        ADD_FAILURE() << "value " << i << ": got " << int{actual.pixels()[i]} << ", Pillow "
                      << int{expected.pixels()[i]};
      }
    }
    EXPECT_EQ(mismatches, 0);
    ++compared;
  }
  EXPECT_EQ(compared, 60);
}

// Float outputs repeat Pillow's double-precision sums operation for operation and match it
// exactly on the development machine. The tolerance of 4 float ulps (ASSERT_FLOAT_EQ) leaves
// room for a compiler that fuses multiply-adds differently from Pillow's build.
TEST(ResizePillowReference, FloatMatchesWithinRounding) {
  const Manifest manifest = read_manifest();
  const ReferenceInput& input = manifest.inputs.at("float");
  const ImageF source = load_f32(input.file, input.width, input.height);
  int compared = 0;
  for (const ReferenceCase& entry : manifest.cases) {
    if (entry.kind != "float") {
      continue;
    }
    SCOPED_TRACE(entry.file);
    const ImageF expected = load_f32(entry.file, entry.width, entry.height);
    const ImageF actual =
        resize_float(source, entry.width, entry.height, filter_named(entry.filter));
    ASSERT_EQ(actual.width(), entry.width);
    ASSERT_EQ(actual.height(), entry.height);
    for (std::size_t i = 0; i < expected.pixels().size(); ++i) {
      ASSERT_FLOAT_EQ(actual.pixels()[i], expected.pixels()[i]) << "value " << i;
    }
    ++compared;
  }
  EXPECT_EQ(compared, 16);
}

TEST(Resize, SameSizeReturnsCopy) {
  const Image image(3, 2, 4, {1,  2,  3,  4,  5,  6,  7,  0,  9,  10, 11, 128,
                              13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24});
  EXPECT_EQ(resize(image, 3, 2, ResampleFilter::kLanczos), image);
  const ImageF floats = to_float(image);
  EXPECT_EQ(resize_float(floats, 3, 2, ResampleFilter::kBicubic), floats);
}

TEST(Resize, ConstantImageStaysConstant) {
  for (const ResampleFilter filter : {ResampleFilter::kBox, ResampleFilter::kBilinear,
                                      ResampleFilter::kBicubic, ResampleFilter::kLanczos}) {
    SCOPED_TRACE(resample_filter_name(filter));
    Image image(19, 11, 3);
    for (std::uint8_t& value : image.pixels()) {
      value = 201;
    }
    for (const auto& [width, height] : std::vector<std::pair<int, int>>{{7, 4}, {45, 30}, {1, 1}}) {
      const Image out = resize(image, width, height, filter);
      for (const std::uint8_t value : out.pixels()) {
        ASSERT_EQ(value, 201) << width << "x" << height;
      }
    }
  }
}

TEST(ResizeFloat, ChannelsAreIndependent) {
  ImageF rgb(9, 6, 3);
  for (int y = 0; y < 6; ++y) {
    for (int x = 0; x < 9; ++x) {
      for (int c = 0; c < 3; ++c) {
        rgb.at(x, y, c) = static_cast<float>((x * 31 + y * 17 + c * 101) % 256);
      }
    }
  }
  const ImageF out = resize_float(rgb, 4, 11, ResampleFilter::kLanczos);
  for (int c = 0; c < 3; ++c) {
    ImageF channel(9, 6, 1);
    for (int y = 0; y < 6; ++y) {
      for (int x = 0; x < 9; ++x) {
        channel.at(x, y, 0) = rgb.at(x, y, c);
      }
    }
    const ImageF single = resize_float(channel, 4, 11, ResampleFilter::kLanczos);
    for (int y = 0; y < 11; ++y) {
      for (int x = 0; x < 4; ++x) {
        ASSERT_EQ(out.at(x, y, c), single.at(x, y, 0)) << x << ", " << y << ", " << c;
      }
    }
  }
}

TEST(ResizeErrors, InvalidSizesAndEmptyInput) {
  const Image image(4, 4, 3);
  EXPECT_THAT(error_message<InvalidInputError>([&] { resize(image, 0, 4, ResampleFilter::kBox); }),
              HasSubstr("resize: invalid output size 0x4"));
  EXPECT_THAT(error_message<InvalidInputError>(
                  [&] { resize_float(to_float(image), 3, -2, ResampleFilter::kLanczos); }),
              HasSubstr("resize_float: invalid output size 3x-2"));
  EXPECT_THAT(error_message<InvalidInputError>([&] { resize_area(ImageF(), 2, 2); }),
              HasSubstr("resize_area: the input image is empty"));
}

TEST(ResizeArea, IntegerFactorAveragesBlocks) {
  // 4x2 -> 2x1: each output is the mean of a 2x2 block.
  const ImageF image(4, 2, 1, {0, 2, 10, 20, 4, 6, 30, 41});
  const ImageF out = resize_area(image, 2, 1);
  EXPECT_FLOAT_EQ(out.at(0, 0, 0), 3.0f);
  EXPECT_FLOAT_EQ(out.at(1, 0, 0), 25.25f);
}

TEST(ResizeArea, FractionalFactorUsesAdaptivePoolingRanges) {
  // 5 -> 2 columns: [0, 3) and [2, 5). 3 -> 2 rows: [0, 2) and [1, 3).
  std::vector<float> values(15);
  for (int i = 0; i < 15; ++i) {
    values[i] = static_cast<float>(i * i);
  }
  const ImageF image(5, 3, 1, values);
  const ImageF out = resize_area(image, 2, 2);
  const auto mean = [&](int x0, int x1, int y0, int y1) {
    double sum = 0;
    for (int y = y0; y < y1; ++y) {
      for (int x = x0; x < x1; ++x) {
        sum += values[y * 5 + x];
      }
    }
    return static_cast<float>(sum / ((x1 - x0) * (y1 - y0)));
  };
  EXPECT_FLOAT_EQ(out.at(0, 0, 0), mean(0, 3, 0, 2));
  EXPECT_FLOAT_EQ(out.at(1, 0, 0), mean(2, 5, 0, 2));
  EXPECT_FLOAT_EQ(out.at(0, 1, 0), mean(0, 3, 1, 3));
  EXPECT_FLOAT_EQ(out.at(1, 1, 0), mean(2, 5, 1, 3));
}

TEST(ResizeArea, UpscalingCopiesOrAveragesNeighbours) {
  // 2 -> 3 columns: [0, 1), [0, 2), [1, 2). Channels stay separate.
  const ImageF image(2, 1, 3, {10, 100, 1000, 20, 200, 2000});
  const ImageF out = resize_area(image, 3, 1);
  const std::vector<float> expected = {10, 100, 1000, 15, 150, 1500, 20, 200, 2000};
  EXPECT_EQ(std::vector<float>(out.pixels().begin(), out.pixels().end()), expected);
}

}  // namespace
}  // namespace ethereal
