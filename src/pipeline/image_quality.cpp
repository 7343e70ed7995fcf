#include "pipeline/image_quality.h"

#include <array>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include <fmt/format.h>

#include "runtime/error.h"

namespace ethereal {

namespace {

constexpr double kPeak = 255.0;
constexpr double kSsimK1 = 0.01;
constexpr double kSsimK2 = 0.03;

using Window = std::array<double, kSsimWindowSize>;

void check_same_size(const Image& image, const Image& reference, const char* measure) {
  if (image.empty() || reference.empty()) {
    throw InvalidInputError(fmt::format("{}: an image is empty ({}x{} and reference {}x{})",
                                        measure, image.width(), image.height(), reference.width(),
                                        reference.height()));
  }
  if (image.width() != reference.width() || image.height() != reference.height()) {
    throw InvalidInputError(fmt::format(
        "{}: the image is {}x{} but the reference is {}x{}; compare images of the same size",
        measure, image.width(), image.height(), reference.width(), reference.height()));
  }
}

// The normalised 1-D Gaussian; the 2-D window is its outer product with itself.
Window gaussian_window() {
  Window window{};
  const int center = kSsimWindowSize / 2;
  double sum = 0.0;
  for (int i = 0; i < kSsimWindowSize; ++i) {
    const double d = i - center;
    window[i] = std::exp(-d * d / (2.0 * kSsimGaussianSigma * kSsimGaussianSigma));
    sum += window[i];
  }
  for (double& w : window) {
    w /= sum;
  }
  return window;
}

// A 2-D array of doubles, row-major.
struct Plane {
  int width = 0;
  int height = 0;
  std::vector<double> values;

  Plane(int w, int h) : width(w), height(h), values(static_cast<std::size_t>(w) * h, 0.0) {}
  double& at(int x, int y) { return values[static_cast<std::size_t>(y) * width + x]; }
  double at(int x, int y) const { return values[static_cast<std::size_t>(y) * width + x]; }
};

// Gaussian-weighted local means over every position where the whole window fits ("valid"
// filtering): the result is (width - 10) x (height - 10).
Plane filter_valid(const Plane& plane, const Window& window) {
  const int out_width = plane.width - kSsimWindowSize + 1;
  const int out_height = plane.height - kSsimWindowSize + 1;
  Plane rows(out_width, plane.height);
  for (int y = 0; y < plane.height; ++y) {
    for (int x = 0; x < out_width; ++x) {
      double sum = 0.0;
      for (int k = 0; k < kSsimWindowSize; ++k) {
        sum += window[k] * plane.at(x + k, y);
      }
      rows.at(x, y) = sum;
    }
  }
  Plane out(out_width, out_height);
  for (int y = 0; y < out_height; ++y) {
    for (int x = 0; x < out_width; ++x) {
      double sum = 0.0;
      for (int k = 0; k < kSsimWindowSize; ++k) {
        sum += window[k] * rows.at(x, y + k);
      }
      out.at(x, y) = sum;
    }
  }
  return out;
}

// Mean SSIM of channel `channel` of two RGB images of the same size.
double channel_ssim(const Image& image, const Image& reference, int channel, const Window& window) {
  const int width = image.width();
  const int height = image.height();
  Plane x(width, height);
  Plane y(width, height);
  Plane xx(width, height);
  Plane yy(width, height);
  Plane xy(width, height);
  for (int row = 0; row < height; ++row) {
    for (int column = 0; column < width; ++column) {
      const double a = image.at(column, row, channel);
      const double b = reference.at(column, row, channel);
      x.at(column, row) = a;
      y.at(column, row) = b;
      xx.at(column, row) = a * a;
      yy.at(column, row) = b * b;
      xy.at(column, row) = a * b;
    }
  }
  const Plane mean_x = filter_valid(x, window);
  const Plane mean_y = filter_valid(y, window);
  const Plane mean_xx = filter_valid(xx, window);
  const Plane mean_yy = filter_valid(yy, window);
  const Plane mean_xy = filter_valid(xy, window);

  const double c1 = (kSsimK1 * kPeak) * (kSsimK1 * kPeak);
  const double c2 = (kSsimK2 * kPeak) * (kSsimK2 * kPeak);
  double sum = 0.0;
  for (std::size_t i = 0; i < mean_x.values.size(); ++i) {
    const double mx = mean_x.values[i];
    const double my = mean_y.values[i];
    const double variance_x = mean_xx.values[i] - mx * mx;
    const double variance_y = mean_yy.values[i] - my * my;
    const double covariance = mean_xy.values[i] - mx * my;
    sum += ((2.0 * mx * my + c1) * (2.0 * covariance + c2)) /
           ((mx * mx + my * my + c1) * (variance_x + variance_y + c2));
  }
  return sum / static_cast<double>(mean_x.values.size());
}

}  // namespace

double psnr(const Image& image, const Image& reference) {
  check_same_size(image, reference, "PSNR");
  const Image a = to_rgb(image);
  const Image b = to_rgb(reference);
  double squared_error = 0.0;
  const std::span<const std::uint8_t> pa = a.pixels();
  const std::span<const std::uint8_t> pb = b.pixels();
  for (std::size_t i = 0; i < pa.size(); ++i) {
    const double d = static_cast<double>(pa[i]) - static_cast<double>(pb[i]);
    squared_error += d * d;
  }
  if (squared_error == 0.0) {
    return std::numeric_limits<double>::infinity();
  }
  const double mse = squared_error / static_cast<double>(pa.size());
  return 10.0 * std::log10(kPeak * kPeak / mse);
}

double ssim(const Image& image, const Image& reference) {
  check_same_size(image, reference, "SSIM");
  if (image.width() < kSsimWindowSize || image.height() < kSsimWindowSize) {
    throw InvalidInputError(
        fmt::format("SSIM: the images are {}x{}, smaller than the {}x{} window; compare images "
                    "of at least {}x{} pixels",
                    image.width(), image.height(), kSsimWindowSize, kSsimWindowSize,
                    kSsimWindowSize, kSsimWindowSize));
  }
  const Image a = to_rgb(image);
  const Image b = to_rgb(reference);
  const Window window = gaussian_window();
  double sum = 0.0;
  for (int channel = 0; channel < 3; ++channel) {
    sum += channel_ssim(a, b, channel, window);
  }
  return sum / 3.0;
}

}  // namespace ethereal
