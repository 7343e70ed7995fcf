#include "io/image.h"

#include <cmath>
#include <string>
#include <utility>

#include "runtime/error.h"

namespace ethereal {
namespace {

void validate_shape(int width, int height, int channels) {
  if (width <= 0 || height <= 0) {
    throw InvalidInputError("invalid image size " + std::to_string(width) + "x" +
                            std::to_string(height) + ": width and height must be positive");
  }
  if (channels != 1 && channels != 3 && channels != 4) {
    throw InvalidInputError("invalid image channel count " + std::to_string(channels) +
                            ": expected 1 (gray), 3 (RGB) or 4 (RGBA)");
  }
}

std::size_t value_count(int width, int height, int channels) {
  return static_cast<std::size_t>(width) * static_cast<std::size_t>(height) *
         static_cast<std::size_t>(channels);
}

}  // namespace

template <typename T>
BasicImage<T>::BasicImage(int width, int height, int channels)
    : width_(width), height_(height), channels_(channels) {
  validate_shape(width, height, channels);
  pixels_.assign(value_count(width, height, channels), T{});
}

template <typename T>
BasicImage<T>::BasicImage(int width, int height, int channels, std::vector<T> pixels)
    : width_(width), height_(height), channels_(channels), pixels_(std::move(pixels)) {
  validate_shape(width, height, channels);
  const std::size_t expected = value_count(width, height, channels);
  if (pixels_.size() != expected) {
    throw InvalidInputError("invalid pixel buffer for a " + std::to_string(width) + "x" +
                            std::to_string(height) + "x" + std::to_string(channels) +
                            " image: expected " + std::to_string(expected) + " values, got " +
                            std::to_string(pixels_.size()));
  }
}

template class BasicImage<std::uint8_t>;
template class BasicImage<float>;

Image to_rgb(const Image& image) {
  if (image.empty() || image.channels() == 3) {
    return image;
  }
  Image rgb(image.width(), image.height(), 3);
  const std::size_t pixel_count = static_cast<std::size_t>(image.width()) * image.height();
  const std::uint8_t* in = image.pixels().data();
  std::uint8_t* out = rgb.pixels().data();
  const int in_channels = image.channels();
  for (std::size_t i = 0; i < pixel_count; ++i) {
    const std::uint8_t* pixel = in + i * in_channels;
    if (in_channels == 1) {
      out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = pixel[0];
    } else {
      out[3 * i] = pixel[0];
      out[3 * i + 1] = pixel[1];
      out[3 * i + 2] = pixel[2];
    }
  }
  return rgb;
}

ImageF to_float(const Image& image) {
  if (image.empty()) {
    return {};
  }
  std::vector<float> values(image.pixels().begin(), image.pixels().end());
  return ImageF(image.width(), image.height(), image.channels(), std::move(values));
}

Image to_uint8(const ImageF& image) {
  if (image.empty()) {
    return {};
  }
  std::vector<std::uint8_t> values(image.pixels().size());
  const std::span<const float> in = image.pixels();
  for (std::size_t i = 0; i < values.size(); ++i) {
    const float v = in[i];
    if (!(v > 0.0f)) {  // also catches NaN
      values[i] = 0;
    } else if (v >= 255.0f) {
      values[i] = 255;
    } else {
      values[i] = static_cast<std::uint8_t>(std::floor(v + 0.5f));
    }
  }
  return Image(image.width(), image.height(), image.channels(), std::move(values));
}

}  // namespace ethereal
