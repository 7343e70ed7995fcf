#include "io/resample.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "runtime/parallel.h"

namespace ethereal {
namespace {

// Pillow's fixed-point precision for 8-bit images: 32 - 8 - 2 bits, leaving room for the
// 8-bit sample and a sign and overflow bit in a 32-bit accumulator.
constexpr int kPrecisionBits = 32 - 8 - 2;
constexpr std::int64_t kRowsPerTask = 16;

struct FilterKernel {
  double (*weight)(double x);
  double support;
};

double box_weight(double x) {
  return x > -0.5 && x <= 0.5 ? 1.0 : 0.0;
}

double bilinear_weight(double x) {
  x = std::abs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

double bicubic_weight(double x) {
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) {
    return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  }
  if (x < 2.0) {
    return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  }
  return 0.0;
}

double sinc(double x) {
  if (x == 0.0) {
    return 1.0;
  }
  x *= std::numbers::pi;
  return std::sin(x) / x;
}

double lanczos_weight(double x) {
  return x >= -3.0 && x < 3.0 ? sinc(x) * sinc(x / 3.0) : 0.0;
}

FilterKernel kernel_of(ResampleFilter filter) {
  switch (filter) {
    case ResampleFilter::kBox: return {box_weight, 0.5};
    case ResampleFilter::kBilinear: return {bilinear_weight, 1.0};
    case ResampleFilter::kBicubic: return {bicubic_weight, 2.0};
    case ResampleFilter::kLanczos: return {lanczos_weight, 3.0};
  }
  return {box_weight, 0.5};
}

// Weights of one resampling axis. Output index i reads input indices
// first[i] .. first[i] + count[i] - 1 with weights[i * kernel_size + k].
struct AxisWeights {
  int kernel_size = 0;
  std::vector<int> first;
  std::vector<int> count;
  std::vector<double> weights;
};

AxisWeights compute_axis_weights(int in_size, int out_size, const FilterKernel& kernel) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = kernel.support * filterscale;
  const double inverse_filterscale = 1.0 / filterscale;  // Pillow multiplies by the reciprocal

  AxisWeights axis;
  axis.kernel_size = static_cast<int>(std::ceil(support)) * 2 + 1;
  axis.first.resize(out_size);
  axis.count.resize(out_size);
  axis.weights.assign(static_cast<std::size_t>(out_size) * axis.kernel_size, 0.0);
  for (int i = 0; i < out_size; ++i) {
    const double center = (i + 0.5) * scale;
    // Truncation toward zero, then clamping, as Pillow's (int) casts do.
    const int first = std::max(static_cast<int>(center - support + 0.5), 0);
    const int end = std::min(static_cast<int>(center + support + 0.5), in_size);
    const int count = end - first;
    double* weights = &axis.weights[static_cast<std::size_t>(i) * axis.kernel_size];
    double sum = 0.0;
    for (int k = 0; k < count; ++k) {
      weights[k] = kernel.weight((k + first - center + 0.5) * inverse_filterscale);
      sum += weights[k];
    }
    if (sum != 0.0) {
      for (int k = 0; k < count; ++k) {
        weights[k] /= sum;
      }
    }
    axis.first[i] = first;
    axis.count[i] = count;
  }
  return axis;
}

std::vector<std::int32_t> to_fixed_point(const std::vector<double>& weights) {
  std::vector<std::int32_t> fixed(weights.size());
  constexpr double kOne = 1 << kPrecisionBits;
  for (std::size_t i = 0; i < weights.size(); ++i) {
    const double w = weights[i];
    fixed[i] = static_cast<std::int32_t>(w < 0 ? -0.5 + w * kOne : 0.5 + w * kOne);
  }
  return fixed;
}

std::uint8_t clip_fixed_point(std::int32_t sum) {
  return static_cast<std::uint8_t>(std::clamp(sum >> kPrecisionBits, 0, 255));
}

// Rows [row_begin, row_end) of `in`, resampled horizontally into rows 0.. of `out`.
void resample_rows_u8(const Image& in, int row_begin, const AxisWeights& axis,
                      const std::vector<std::int32_t>& fixed, Image& out) {
  const int channels = in.channels();
  parallel_for(0, out.height(), kRowsPerTask, [&](std::int64_t begin, std::int64_t end) {
    for (auto y = static_cast<int>(begin); y < end; ++y) {
      const std::uint8_t* in_row = in.row(y + row_begin);
      std::uint8_t* out_row = out.row(y);
      for (int x = 0; x < out.width(); ++x) {
        const std::int32_t* w = &fixed[static_cast<std::size_t>(x) * axis.kernel_size];
        const std::uint8_t* source = in_row + static_cast<std::size_t>(axis.first[x]) * channels;
        for (int c = 0; c < channels; ++c) {
          std::int32_t sum = 1 << (kPrecisionBits - 1);
          for (int k = 0; k < axis.count[x]; ++k) {
            sum += source[k * channels + c] * w[k];
          }
          out_row[x * channels + c] = clip_fixed_point(sum);
        }
      }
    }
  });
}

void resample_columns_u8(const Image& in, const AxisWeights& axis, int row_offset,
                         const std::vector<std::int32_t>& fixed, Image& out) {
  const std::size_t row_size = out.row_size();
  parallel_for(0, out.height(), kRowsPerTask, [&](std::int64_t begin, std::int64_t end) {
    for (auto y = static_cast<int>(begin); y < end; ++y) {
      const std::int32_t* w = &fixed[static_cast<std::size_t>(y) * axis.kernel_size];
      const int first = axis.first[y] - row_offset;
      std::uint8_t* out_row = out.row(y);
      for (std::size_t i = 0; i < row_size; ++i) {
        std::int32_t sum = 1 << (kPrecisionBits - 1);
        for (int k = 0; k < axis.count[y]; ++k) {
          sum += in.row(first + k)[i] * w[k];
        }
        out_row[i] = clip_fixed_point(sum);
      }
    }
  });
}

void resample_rows_f32(const ImageF& in, int row_begin, const AxisWeights& axis, ImageF& out) {
  const int channels = in.channels();
  parallel_for(0, out.height(), kRowsPerTask, [&](std::int64_t begin, std::int64_t end) {
    for (auto y = static_cast<int>(begin); y < end; ++y) {
      const float* in_row = in.row(y + row_begin);
      float* out_row = out.row(y);
      for (int x = 0; x < out.width(); ++x) {
        const double* w = &axis.weights[static_cast<std::size_t>(x) * axis.kernel_size];
        const float* source = in_row + static_cast<std::size_t>(axis.first[x]) * channels;
        for (int c = 0; c < channels; ++c) {
          double sum = 0.0;
          for (int k = 0; k < axis.count[x]; ++k) {
            sum += source[k * channels + c] * w[k];
          }
          out_row[x * channels + c] = static_cast<float>(sum);
        }
      }
    }
  });
}

void resample_columns_f32(const ImageF& in, const AxisWeights& axis, int row_offset, ImageF& out) {
  const std::size_t row_size = out.row_size();
  parallel_for(0, out.height(), kRowsPerTask, [&](std::int64_t begin, std::int64_t end) {
    for (auto y = static_cast<int>(begin); y < end; ++y) {
      const double* w = &axis.weights[static_cast<std::size_t>(y) * axis.kernel_size];
      const int first = axis.first[y] - row_offset;
      float* out_row = out.row(y);
      for (std::size_t i = 0; i < row_size; ++i) {
        double sum = 0.0;
        for (int k = 0; k < axis.count[y]; ++k) {
          sum += in.row(first + k)[i] * w[k];
        }
        out_row[i] = static_cast<float>(sum);
      }
    }
  });
}

template <typename T>
void validate_resize(const BasicImage<T>& image, int width, int height, const char* function) {
  if (image.empty()) {
    throw InvalidInputError(std::string(function) + ": the input image is empty (0x0)");
  }
  if (width <= 0 || height <= 0) {
    throw InvalidInputError(std::string(function) + ": invalid output size " +
                            std::to_string(width) + "x" + std::to_string(height) +
                            "; width and height must be positive");
  }
}

// Pillow's two-pass driver. The horizontal pass only produces the rows that the vertical
// pass reads, rows [vertical.first[0], last used row], which changes no value.
template <typename T, typename RowPass, typename ColumnPass>
BasicImage<T> resample_two_pass(const BasicImage<T>& image, int width, int height,
                                ResampleFilter filter, RowPass row_pass, ColumnPass column_pass) {
  const FilterKernel kernel = kernel_of(filter);
  const bool need_horizontal = width != image.width();
  const bool need_vertical = height != image.height();
  if (!need_horizontal && !need_vertical) {
    return image;
  }
  const AxisWeights horizontal = compute_axis_weights(image.width(), width, kernel);
  const AxisWeights vertical = compute_axis_weights(image.height(), height, kernel);

  if (!need_horizontal) {
    BasicImage<T> out(width, height, image.channels());
    column_pass(image, vertical, 0, out);
    return out;
  }
  const int row_begin = need_vertical ? vertical.first.front() : 0;
  const int row_end =
      need_vertical ? vertical.first.back() + vertical.count.back() : image.height();
  BasicImage<T> rows(width, row_end - row_begin, image.channels());
  row_pass(image, row_begin, horizontal, rows);
  if (!need_vertical) {
    return rows;
  }
  BasicImage<T> out(width, height, image.channels());
  column_pass(rows, vertical, row_begin, out);
  return out;
}

// Pillow's RGBA -> RGBa conversion: each color times alpha / 255, rounded.
void premultiply_alpha(Image& image) {
  std::uint8_t* p = image.pixels().data();
  const std::size_t pixel_count = image.pixels().size() / 4;
  for (std::size_t i = 0; i < pixel_count; ++i, p += 4) {
    const unsigned alpha = p[3];
    for (int c = 0; c < 3; ++c) {
      const unsigned product = p[c] * alpha + 128;
      p[c] = static_cast<std::uint8_t>(((product >> 8) + product) >> 8);
    }
  }
}

// Pillow's RGBa -> RGBA conversion: each color times 255 / alpha, truncated and clamped;
// alpha 0 and 255 leave the colors unchanged.
void unpremultiply_alpha(Image& image) {
  std::uint8_t* p = image.pixels().data();
  const std::size_t pixel_count = image.pixels().size() / 4;
  for (std::size_t i = 0; i < pixel_count; ++i, p += 4) {
    const unsigned alpha = p[3];
    if (alpha == 0 || alpha == 255) {
      continue;
    }
    for (int c = 0; c < 3; ++c) {
      p[c] = static_cast<std::uint8_t>(std::min(255u, 255u * p[c] / alpha));
    }
  }
}

// Inclusive-exclusive source range of output index i for adaptive average pooling.
std::pair<int, int> area_range(int i, int in_size, int out_size) {
  const std::int64_t begin = static_cast<std::int64_t>(i) * in_size / out_size;
  const std::int64_t end = (static_cast<std::int64_t>(i + 1) * in_size + out_size - 1) / out_size;
  return {static_cast<int>(begin), static_cast<int>(end)};
}

}  // namespace

const char* resample_filter_name(ResampleFilter filter) {
  switch (filter) {
    case ResampleFilter::kBox: return "box";
    case ResampleFilter::kBilinear: return "bilinear";
    case ResampleFilter::kBicubic: return "bicubic";
    case ResampleFilter::kLanczos: return "lanczos";
  }
  return "unknown";
}

Image resize(const Image& image, int width, int height, ResampleFilter filter) {
  validate_resize(image, width, height, "resize");
  const auto row_pass = [](const Image& in, int row_begin, const AxisWeights& axis, Image& out) {
    resample_rows_u8(in, row_begin, axis, to_fixed_point(axis.weights), out);
  };
  const auto column_pass = [](const Image& in, const AxisWeights& axis, int row_offset,
                              Image& out) {
    resample_columns_u8(in, axis, row_offset, to_fixed_point(axis.weights), out);
  };
  if (!image.has_alpha()) {
    return resample_two_pass(image, width, height, filter, row_pass, column_pass);
  }
  if (width == image.width() && height == image.height()) {
    return image;  // Pillow returns a copy before converting to premultiplied alpha
  }
  Image premultiplied = image;
  premultiply_alpha(premultiplied);
  Image out = resample_two_pass(premultiplied, width, height, filter, row_pass, column_pass);
  unpremultiply_alpha(out);
  return out;
}

ImageF resize_float(const ImageF& image, int width, int height, ResampleFilter filter) {
  validate_resize(image, width, height, "resize_float");
  return resample_two_pass(image, width, height, filter, resample_rows_f32, resample_columns_f32);
}

ImageF resize_area(const ImageF& image, int width, int height) {
  validate_resize(image, width, height, "resize_area");
  const int channels = image.channels();
  ImageF out(width, height, channels);
  parallel_for(0, height, kRowsPerTask, [&](std::int64_t begin, std::int64_t end) {
    std::vector<double> sums(static_cast<std::size_t>(channels));
    for (auto y = static_cast<int>(begin); y < end; ++y) {
      const auto [y0, y1] = area_range(y, image.height(), height);
      for (int x = 0; x < width; ++x) {
        const auto [x0, x1] = area_range(x, image.width(), width);
        std::fill(sums.begin(), sums.end(), 0.0);
        for (int sy = y0; sy < y1; ++sy) {
          for (int sx = x0; sx < x1; ++sx) {
            for (int c = 0; c < channels; ++c) {
              sums[c] += image.at(sx, sy, c);
            }
          }
        }
        const double area = static_cast<double>(y1 - y0) * (x1 - x0);
        for (int c = 0; c < channels; ++c) {
          out.at(x, y, c) = static_cast<float>(sums[c] / area);
        }
      }
    }
  });
  return out;
}

}  // namespace ethereal
