#include "pipeline/geometry.h"
#include "models/qwen2_5_vl/smart_resize.h"

#include <gtest/gtest.h>

#include "runtime/error.h"

namespace ethereal {
namespace {

struct SizeCase {
  int input_width;
  int input_height;
  ImageSize vae;           // ~1024^2 copy
  ImageSize vision;        // ~384^2 copy
  ImageSize vision_final;  // after smart_resize
};

TEST(CalculateDimensions, MatchesPipelineExamples) {
  const SizeCase cases[] = {
      {1024, 1024, {1024, 1024}, {384, 384}, {392, 392}},
      {1024, 768, {1184, 896}, {448, 320}, {448, 308}},
      {1920, 1080, {1376, 768}, {512, 288}, {504, 280}},
      {1536, 1024, {1248, 832}, {480, 320}, {476, 308}},
  };
  for (const SizeCase& c : cases) {
    const double ratio = static_cast<double>(c.input_width) / c.input_height;
    EXPECT_EQ(calculate_dimensions(1024.0 * 1024.0, ratio), c.vae) << c.input_width;
    const ImageSize vision = calculate_dimensions(384.0 * 384.0, ratio);
    EXPECT_EQ(vision, c.vision) << c.input_width;
    EXPECT_EQ(smart_resize(vision.height, vision.width), c.vision_final) << c.input_width;
  }
}

TEST(RoundHalfEven, BreaksTiesToEven) {
  EXPECT_EQ(round_half_even(2.5), 2);
  EXPECT_EQ(round_half_even(3.5), 4);
  EXPECT_EQ(round_half_even(-2.5), -2);
  EXPECT_EQ(round_half_even(2.51), 3);
}

TEST(DefaultOutputSize, FollowsLastImageRatio) {
  EXPECT_EQ(default_output_size(1920, 1080), (ImageSize{1376, 768}));
  EXPECT_EQ(default_output_size(100, 100), (ImageSize{1024, 1024}));
  const ImageSize tall = default_output_size(300, 1000);
  EXPECT_EQ(tall.width % 16, 0);
  EXPECT_EQ(tall.height % 16, 0);
  EXPECT_GT(tall.height, tall.width);
}

TEST(SmartResize, ClampsPixelCount) {
  const ImageSize large = smart_resize(8000, 8000);
  EXPECT_LE(static_cast<long>(large.width) * large.height, 28L * 28 * 1280);
  EXPECT_EQ(large.width % 28, 0);
  const ImageSize small = smart_resize(30, 40);
  EXPECT_GE(static_cast<long>(small.width) * small.height, 56L * 56);
  EXPECT_EQ(small.height % 28, 0);
}

TEST(SmartResize, RejectsTinyAndExtremeImages) {
  EXPECT_THROW(smart_resize(20, 400), InvalidInputError);
  try {
    smart_resize(28, 28 * 201);
    FAIL() << "aspect ratio 201 accepted";
  } catch (const InvalidInputError& error) {
    EXPECT_NE(std::string(error.what()).find("aspect ratio"), std::string::npos);
  }
}

}  // namespace
}  // namespace ethereal
