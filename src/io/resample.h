// Image resampling that reproduces Pillow 9.4's Image.resize exactly, plus area averaging.
//
// The reference diffusion pipelines resize inputs with Pillow (Lanczos for the VAE and
// vision-language copies, bicubic inside the Qwen2-VL processor), so these functions follow
// Pillow's convolution step for step (its Resample.c):
//  - Separable: a horizontal pass when the width changes, then a vertical pass when the
//    height changes. Same size in both directions returns a copy.
//  - For output index i along an axis of input size n and output size m, scale = n / m, the
//    source center is (i + 0.5) * scale, and the kernel is stretched by
//    filterscale = max(scale, 1) when downscaling, so support = filter support * filterscale.
//    Input indices j run from (int)(center - support + 0.5) to (int)(center + support + 0.5),
//    clamped to [0, n), with weight filter((j - center + 0.5) * (1 / filterscale)), normalised
//    to a sum of 1. Coefficients are computed in double, in Pillow's order of operations
//    (dividing by filterscale instead moves some float results by one ulp).
//  - 8-bit images (`resize`): weights become fixed point, round(w * 2^22) with halves away
//    from zero, accumulated in 32-bit integers starting at 2^21 (for rounding), shifted right
//    by 22 and clamped to 0..255. The intermediate image between the passes is 8-bit.
//    RGBA images are premultiplied by alpha first and divided by it afterwards, as Pillow does
//    for RGBA (with its integer rounding of both steps).
//  - Float images (`resize_float`): Pillow's mode "F" path, applied to each channel on its own:
//    double accumulation, float intermediate, no clamping and no premultiplication.
// Tests compare both paths with outputs of Pillow 9.4 stored in tests/data/io/resample.
//
// `resize_area` is area averaging, a different operation; see its comment.
#pragma once

#include "io/image.h"

namespace ethereal {

// Kernels of Pillow's resampling filters, with their support at scale 1 (in input pixels).
enum class ResampleFilter {
  kBox,       // 1 on (-0.5, 0.5], support 0.5; Image.Resampling.BOX
  kBilinear,  // triangle 1 - |x|, support 1; Image.Resampling.BILINEAR
  kBicubic,   // Keys cubic convolution with a = -0.5, support 2; Image.Resampling.BICUBIC
  kLanczos,   // sinc(x) * sinc(x / 3) on [-3, 3), support 3; Image.Resampling.LANCZOS
};

const char* resample_filter_name(ResampleFilter filter);  // "box", "bilinear", ...

// Resizes an 8-bit image to width x height exactly as Pillow's Image.resize((width, height),
// filter) does for modes L, RGB and RGBA. Throws InvalidInputError unless the image is non-empty
// and width and height are positive.
Image resize(const Image& image, int width, int height, ResampleFilter filter);

// Resizes a float image with Pillow's mode "F" arithmetic, each channel independently.
// Throws InvalidInputError unless the image is non-empty and width and height are positive.
ImageF resize_float(const ImageF& image, int width, int height, ResampleFilter filter);

// Area averaging, defined as PyTorch's adaptive average pooling (and F.interpolate with
// mode="area"): output pixel (x, y) is the plain mean of the input rectangle with columns
// [floor(x * W / w), ceil((x + 1) * W / w)) and rows [floor(y * H / h), ceil((y + 1) * H / h)),
// for input size W x H and output size w x h. When W / w and H / h are integers this equals
// OpenCV's INTER_AREA. For other ratios OpenCV weights partly covered pixels by their
// coverage while this averages them whole, and on upscaling each output copies one input
// pixel or averages two. Accumulation is in double. Throws InvalidInputError unless the image
// is non-empty and width and height are positive.
ImageF resize_area(const ImageF& image, int width, int height);

}  // namespace ethereal
