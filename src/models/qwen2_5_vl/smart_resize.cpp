#include "models/qwen2_5_vl/smart_resize.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "runtime/error.h"

namespace ethereal {

ImageSize smart_resize(int height, int width, int factor, std::int64_t min_pixels,
                       std::int64_t max_pixels) {
  if (height < factor || width < factor) {
    throw InvalidInputError(fmt::format(
        "image of {}x{} pixels is too small for the vision encoder: each side must be at least "
        "{} pixels",
        width, height, factor));
  }
  if (static_cast<double>(std::max(height, width)) / std::min(height, width) > 200.0) {
    throw InvalidInputError(fmt::format(
        "image of {}x{} pixels has an aspect ratio above 200, which the vision encoder does not "
        "accept; crop it first",
        width, height));
  }
  double h_bar =
      static_cast<double>(round_half_even(static_cast<double>(height) / factor) * factor);
  double w_bar = static_cast<double>(round_half_even(static_cast<double>(width) / factor) * factor);
  const double pixels = static_cast<double>(height) * width;
  if (h_bar * w_bar > static_cast<double>(max_pixels)) {
    const double beta = std::sqrt(pixels / static_cast<double>(max_pixels));
    h_bar = std::max<double>(factor, std::floor(height / beta / factor) * factor);
    w_bar = std::max<double>(factor, std::floor(width / beta / factor) * factor);
  } else if (h_bar * w_bar < static_cast<double>(min_pixels)) {
    const double beta = std::sqrt(static_cast<double>(min_pixels) / pixels);
    h_bar = std::ceil(height * beta / factor) * factor;
    w_bar = std::ceil(width * beta / factor) * factor;
  }
  return {static_cast<int>(w_bar), static_cast<int>(h_bar)};
}

}  // namespace ethereal
