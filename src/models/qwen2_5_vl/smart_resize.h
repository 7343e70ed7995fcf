// The Qwen2-VL processor's choice of image size for the vision tower.
#pragma once

#include <cstdint>

#include "io/image_size.h"

namespace ethereal {

// Qwen2-VL smart_resize: both sides multiples of `factor` (patch 14 times merge 2 = 28), the
// pixel count inside [min_pixels, max_pixels], the aspect ratio kept as closely as possible.
// Throws InvalidInputError when a side is shorter than `factor` or the aspect ratio exceeds 200.
ImageSize smart_resize(int height, int width, int factor = 28, std::int64_t min_pixels = 56 * 56,
                       std::int64_t max_pixels = 28 * 28 * 1280);

}  // namespace ethereal
