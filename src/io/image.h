// In-memory images, independent of tensors.
//
// Pixels are stored interleaved row by row (HWC): the value of channel c at column x, row y is
// pixels[(y * width + x) * channels + c]. Channel layouts are 1 (gray), 3 (RGB) and 4 (RGBA
// with straight, not premultiplied, alpha). `Image` contains 8-bit values, the form decoders
// produce and encoders take. `ImageF` contains floats on the same 0..255 scale, for
// resampling without the rounding between passes that the 8-bit path performs.
//
// The conversions follow Pillow 9.4, because the reference diffusion pipelines load their
// inputs with Pillow: `to_rgb` replicates gray and drops alpha without compositing, which is
// what `PIL.Image.convert("RGB")` does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace ethereal {

template <typename T>
class BasicImage {
 public:
  using value_type = T;

  BasicImage() = default;  // empty image, 0 x 0
  // Zero-filled image. Throws InvalidInputError unless width and height are positive and
  // channels is 1, 3 or 4.
  BasicImage(int width, int height, int channels);
  // Takes `pixels` (HWC); throws InvalidInputError when its size is not
  // width * height * channels or the shape is invalid as above.
  BasicImage(int width, int height, int channels, std::vector<T> pixels);

  int width() const { return width_; }
  int height() const { return height_; }
  int channels() const { return channels_; }
  bool empty() const { return pixels_.empty(); }
  bool has_alpha() const { return channels_ == 4; }

  // Number of values in one row: width * channels.
  std::size_t row_size() const { return static_cast<std::size_t>(width_) * channels_; }
  T* row(int y) { return pixels_.data() + static_cast<std::size_t>(y) * row_size(); }
  const T* row(int y) const { return pixels_.data() + static_cast<std::size_t>(y) * row_size(); }

  T& at(int x, int y, int c) { return row(y)[static_cast<std::size_t>(x) * channels_ + c]; }
  T at(int x, int y, int c) const { return row(y)[static_cast<std::size_t>(x) * channels_ + c]; }

  std::span<T> pixels() { return pixels_; }
  std::span<const T> pixels() const { return pixels_; }

  friend bool operator==(const BasicImage&, const BasicImage&) = default;

 private:
  int width_ = 0;
  int height_ = 0;
  int channels_ = 0;
  std::vector<T> pixels_;
};

using Image = BasicImage<std::uint8_t>;
using ImageF = BasicImage<float>;

extern template class BasicImage<std::uint8_t>;
extern template class BasicImage<float>;

// Converts to 3 channels: gray is replicated into R, G and B, and alpha is dropped.
Image to_rgb(const Image& image);

// Converts 8-bit values to floats on the same 0..255 scale.
ImageF to_float(const Image& image);

// Converts floats on the 0..255 scale to 8 bits: each value is clamped to [0, 255] and rounded
// to the nearest integer, halves upward. NaN becomes 0.
Image to_uint8(const ImageF& image);

}  // namespace ethereal
