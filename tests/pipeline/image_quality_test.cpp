#include "pipeline/image_quality.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>

#include "runtime/error.h"
#include "support/errors.h"

namespace ethereal {
namespace {

using PixelFunction = std::function<int(int x, int y, int c)>;

Image make_image(int width, int height, const PixelFunction& value) {
  Image image(width, height, 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < 3; ++c) {
        image.at(x, y, c) = static_cast<std::uint8_t>(std::clamp(value(x, y, c), 0, 255));
      }
    }
  }
  return image;
}

// Smooth gradients with a checker texture, all values in [20, 220].
Image textured_image(int width, int height) {
  return make_image(width, height, [](int x, int y, int c) {
    return 20 + (x * 3 + y * 2 + c * 40) % 160 + ((x / 4 + y / 4) % 2) * 40;
  });
}

Image with_noise(const Image& image, double sigma, std::uint32_t seed) {
  std::mt19937 generator(seed);
  std::normal_distribution<double> noise(0.0, sigma);
  Image noisy = image;
  for (std::uint8_t& value : noisy.pixels()) {
    value = static_cast<std::uint8_t>(std::clamp(std::lround(value + noise(generator)), 0L, 255L));
  }
  return noisy;
}

TEST(Psnr, IdenticalImagesAreInfinite) {
  const Image image = textured_image(40, 30);
  const double value = psnr(image, image);
  EXPECT_TRUE(std::isinf(value));
  EXPECT_GT(value, 0.0);
}

TEST(Psnr, ConstantOffsetMatchesAnalyticValue) {
  const Image image = textured_image(40, 30);
  for (int offset : {1, 5, 20}) {
    const Image shifted =
        make_image(40, 30, [&](int x, int y, int c) { return image.at(x, y, c) + offset; });
    // MSE = offset^2, so PSNR = 20 log10(255 / offset): 48.131, 34.151 and 22.037 dB.
    const double expected = 20.0 * std::log10(255.0 / offset);
    EXPECT_NEAR(psnr(shifted, image), expected, 1e-9) << "offset " << offset;
  }
}

TEST(Psnr, GrayEqualsItsRgbConversion) {
  Image gray(20, 20, 1);
  Image other(20, 20, 1);
  for (int y = 0; y < 20; ++y) {
    for (int x = 0; x < 20; ++x) {
      gray.at(x, y, 0) = static_cast<std::uint8_t>(10 * x + y);
      other.at(x, y, 0) = static_cast<std::uint8_t>(10 * x + 2 * y);
    }
  }
  EXPECT_DOUBLE_EQ(psnr(gray, other), psnr(to_rgb(gray), to_rgb(other)));
  EXPECT_DOUBLE_EQ(ssim(gray, other), ssim(to_rgb(gray), to_rgb(other)));
}

TEST(Ssim, IdenticalImagesAreOne) {
  const Image image = textured_image(64, 48);
  EXPECT_NEAR(ssim(image, image), 1.0, 1e-12);
}

TEST(Ssim, ConstantImagesMatchLuminanceTerm) {
  // With no variance only the luminance term remains: (2 a b + C1) / (a^2 + b^2 + C1).
  const Image a = make_image(16, 16, [](int, int, int) { return 100; });
  const Image b = make_image(16, 16, [](int, int, int) { return 130; });
  const double c1 = (0.01 * 255.0) * (0.01 * 255.0);
  const double expected = (2.0 * 100.0 * 130.0 + c1) / (100.0 * 100.0 + 130.0 * 130.0 + c1);
  EXPECT_NEAR(ssim(a, b), expected, 1e-12);
}

TEST(Ssim, MatchesDirectWindowedReference) {
  // Reference values from a direct (non-separable) evaluation of the 11x11 Gaussian window over
  // the 4x2 valid positions of a 14x12 image, in double precision.
  const PixelFunction base = [](int x, int y, int c) { return (x * 37 + y * 91 + c * 53) % 256; };
  const Image a = make_image(14, 12, base);
  const Image unrelated =
      make_image(14, 12, [](int x, int y, int c) { return (x * x * 3 + y * 17 + c * 29) % 256; });
  const Image close =
      make_image(14, 12, [&](int x, int y, int c) { return base(x, y, c) + (x * y) % 7 - 3; });
  EXPECT_NEAR(ssim(unrelated, a), -0.1271309938252951, 1e-12);
  EXPECT_NEAR(ssim(close, a), 0.9995700270840343, 1e-12);
}

TEST(Ssim, IsSymmetric) {
  const Image image = textured_image(32, 32);
  const Image noisy = with_noise(image, 10.0, 3);
  EXPECT_NEAR(ssim(image, noisy), ssim(noisy, image), 1e-12);
}

TEST(Ssim, DecreasesWithNoise) {
  const Image image = textured_image(64, 64);
  double previous_ssim = 1.0;
  double previous_psnr = std::numeric_limits<double>::infinity();
  for (double sigma : {2.0, 8.0, 32.0, 64.0}) {
    const Image noisy = with_noise(image, sigma, 11);
    const double value = ssim(noisy, image);
    EXPECT_LT(value, previous_ssim) << "sigma " << sigma;
    EXPECT_GT(value, -1.0) << "sigma " << sigma;
    const double peak_ratio = psnr(noisy, image);
    EXPECT_LT(peak_ratio, previous_psnr) << "sigma " << sigma;
    previous_ssim = value;
    previous_psnr = peak_ratio;
  }
  EXPECT_LT(previous_ssim, 0.5);
}

TEST(ImageQuality, SizeMismatchNamesBothSizes) {
  const Image image = textured_image(64, 48);
  const Image reference = textured_image(64, 64);
  for (const std::string& message :
       {test_support::error_message([&] { psnr(image, reference); }),
        test_support::error_message([&] { ssim(image, reference); })}) {
    EXPECT_NE(message.find("64x48"), std::string::npos) << message;
    EXPECT_NE(message.find("64x64"), std::string::npos) << message;
  }
}

TEST(Ssim, RejectsImagesSmallerThanWindow) {
  const Image image = textured_image(10, 30);
  const std::string message = test_support::error_message([&] { ssim(image, image); });
  EXPECT_NE(message.find("10x30"), std::string::npos) << message;
  EXPECT_NE(message.find("11x11"), std::string::npos) << message;
}

TEST(ImageQuality, RejectsEmptyImage) {
  const Image image = textured_image(16, 16);
  EXPECT_THROW(psnr(Image(), image), InvalidInputError);
  EXPECT_THROW(ssim(image, Image()), InvalidInputError);
}

}  // namespace
}  // namespace ethereal
