// Full-reference image quality: PSNR and SSIM of an image against a reference of the same size.
//
// Both measures work on 8-bit RGB values. Gray images are replicated into R, G and B and alpha
// is dropped first (to_rgb), so an image and its RGB conversion score the same.
//
// SSIM is the index of Wang, Bovik, Sheikh and Simoncelli, "Image quality assessment: from
// error visibility to structural similarity" (IEEE TIP, 2004): local means, variances and
// covariance under an 11x11 Gaussian window with sigma 1.5 (normalised to sum 1), K1 = 0.01,
// K2 = 0.03, L = 255, averaged over every position where the window fits inside the image.
// It is computed on each of R, G and B separately and the three means are averaged, with no
// conversion to luminance. Variances are population variances (divided by the window weight
// sum 1), as in the authors' reference code.
#pragma once

#include "io/image.h"

namespace ethereal {

// Side of the SSIM window, in pixels: images must be at least this wide and high.
inline constexpr int kSsimWindowSize = 11;
inline constexpr double kSsimGaussianSigma = 1.5;

// Peak signal-to-noise ratio in dB over all RGB values: 10 log10(255^2 / MSE). Returns
// +infinity for identical images. Throws InvalidInputError naming both sizes when the images
// differ in width or height, and for an empty image.
double psnr(const Image& image, const Image& reference);

// Mean SSIM over the R, G and B channels, in [-1, 1] (1 for identical images). Throws
// InvalidInputError naming both sizes when the images differ in width or height, and naming
// the size when an image is smaller than the 11x11 window.
double ssim(const Image& image, const Image& reference);

}  // namespace ethereal
