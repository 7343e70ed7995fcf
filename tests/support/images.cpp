#include "support/images.h"

#include <cstdint>

namespace ethereal::test_support {

Image gradient_image(int width, int height, int red_offset, int green_offset, int blue_offset) {
  Image image(width, height, 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      image.at(x, y, 0) = static_cast<std::uint8_t>((x * 5 + red_offset) % 256);
      image.at(x, y, 1) = static_cast<std::uint8_t>((y * 7 + green_offset) % 256);
      image.at(x, y, 2) = static_cast<std::uint8_t>((x + y + blue_offset) % 256);
    }
  }
  return image;
}

}  // namespace ethereal::test_support
