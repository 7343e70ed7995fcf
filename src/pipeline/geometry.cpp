#include "pipeline/geometry.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "runtime/error.h"

namespace ethereal {

ImageSize calculate_dimensions(double target_area, double ratio) {
  const double width = std::sqrt(target_area * ratio);
  const double height = width / ratio;
  return {static_cast<int>(round_half_even(width / 32.0) * 32),
          static_cast<int>(round_half_even(height / 32.0) * 32)};
}

ImageSize default_output_size(int last_image_width, int last_image_height, int multiple_of) {
  const double ratio = static_cast<double>(last_image_width) / last_image_height;
  ImageSize size = calculate_dimensions(1024.0 * 1024.0, ratio);
  size.width = size.width / multiple_of * multiple_of;
  size.height = size.height / multiple_of * multiple_of;
  return size;
}

}  // namespace ethereal
