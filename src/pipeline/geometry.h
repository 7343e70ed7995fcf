// Image sizes of the Edit-Plus pipeline: the rounding rules that decide how large each copy of
// an input image is and how large the output is. These follow diffusers'
// QwenImageEditPlusPipeline, including Python's round-half-to-even.
#pragma once

#include <cstdint>

#include "io/image_size.h"

namespace ethereal {

// w = sqrt(area * ratio), h = w / ratio, each rounded to the nearest multiple of 32.
ImageSize calculate_dimensions(double target_area, double ratio);

// The default output size: the last input image's aspect ratio at 1024*1024 pixels, rounded
// as calculate_dimensions does and then floored to a multiple of `multiple_of` (16 = VAE
// scale factor 8 times patch size 2).
ImageSize default_output_size(int last_image_width, int last_image_height, int multiple_of = 16);

}  // namespace ethereal
