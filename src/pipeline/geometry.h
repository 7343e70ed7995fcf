// Image sizes of the Edit-Plus pipeline: the rounding rules that decide how large each copy of
// an input image is and how large the output is. These follow diffusers'
// QwenImageEditPlusPipeline and transformers' Qwen2-VL image processor, including Python's
// round-half-to-even.
#pragma once

#include <cstdint>

namespace ethereal {

struct ImageSize {
  int width = 0;
  int height = 0;

  friend bool operator==(const ImageSize&, const ImageSize&) = default;
};

// Python's round(): to nearest, ties to even.
std::int64_t round_half_even(double value);

// w = sqrt(area * ratio), h = w / ratio, each rounded to the nearest multiple of 32.
ImageSize calculate_dimensions(double target_area, double ratio);

// The default output size: the last input image's aspect ratio at 1024*1024 pixels, rounded
// as calculate_dimensions does and then floored to a multiple of `multiple_of` (16 = VAE
// scale factor 8 times patch size 2).
ImageSize default_output_size(int last_image_width, int last_image_height, int multiple_of = 16);

// Qwen2-VL smart_resize: both sides multiples of `factor` (patch 14 times merge 2 = 28), the
// pixel count inside [min_pixels, max_pixels], the aspect ratio kept as closely as possible.
// Throws InvalidInputError when a side is shorter than `factor` or the aspect ratio exceeds 200.
ImageSize smart_resize(int height, int width, int factor = 28, std::int64_t min_pixels = 56 * 56,
                       std::int64_t max_pixels = 28 * 28 * 1280);

}  // namespace ethereal
