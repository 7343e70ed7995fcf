// Synthetic RGB input images for pipeline and command tests.
#pragma once

#include "io/image.h"

namespace ethereal::test_support {

// A smooth RGB gradient: pixel (x, y) is ((5x + red_offset) mod 256, (7y + green_offset)
// mod 256, (x + y + blue_offset) mod 256).
Image gradient_image(int width, int height, int red_offset = 0, int green_offset = 0,
                     int blue_offset = 0);

}  // namespace ethereal::test_support
