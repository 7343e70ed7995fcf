#include "models/qwen_image/vae_tensor_ops.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "kernels/cpu/kernel_support.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace ethereal::vae_ops {

namespace {

using cpu::simd::from_f32;
using cpu::simd::to_f32;

void require_image(const char* operation, const Tensor& x) {
  if (!x.defined() || x.dim() != 4 || x.size(0) != 1 || !x.is_contiguous()) {
    throw Error(fmt::format("{}: expected a contiguous [1, C, H, W] tensor, got {}", operation,
                            x.defined() ? x.describe() : "an undefined tensor"));
  }
}

// out[c][r] = in[r][c] for a row-major [rows, cols] matrix of T, in 64 x 64 blocks.
template <typename T>
void transpose(const T* in, T* out, std::int64_t rows, std::int64_t cols) {
  constexpr std::int64_t kBlock = 64;
  const std::int64_t row_blocks = (rows + kBlock - 1) / kBlock;
  parallel_for(0, row_blocks, 1, [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t rb = first; rb < last; ++rb) {
      const std::int64_t r0 = rb * kBlock;
      const std::int64_t r1 = std::min(rows, r0 + kBlock);
      for (std::int64_t c0 = 0; c0 < cols; c0 += kBlock) {
        const std::int64_t c1 = std::min(cols, c0 + kBlock);
        for (std::int64_t r = r0; r < r1; ++r) {
          for (std::int64_t c = c0; c < c1; ++c) {
            out[c * rows + r] = in[r * cols + c];
          }
        }
      }
    }
  });
}

// Transposes a [rows, cols] matrix of 2- or 4-byte elements into `out`.
void transpose_elements(const Tensor& in, Tensor& out, std::int64_t rows, std::int64_t cols) {
  if (cpu::support::skip_compute(in, out)) {
    return;
  }
  const std::size_t element = dtype_bytes(in.dtype(), 1);
  if (element == 2) {
    transpose(in.data_as<std::uint16_t>(), out.data_as<std::uint16_t>(), rows, cols);
  } else if (element == 4) {
    transpose(in.data_as<std::uint32_t>(), out.data_as<std::uint32_t>(), rows, cols);
  } else {
    throw Error(fmt::format("vae layout change: dtype {} is not supported; use f32 or bf16",
                            dtype_name(in.dtype())));
  }
}

// y[c, i] = op(c, x[c, i]) over the channels of x [1, C, H, W], in f32.
template <typename Op>
Tensor map_channels(const char* operation, const Tensor& x, std::int64_t channels, Op op) {
  require_image(operation, x);
  if (x.size(1) != channels) {
    throw Error(fmt::format("{}: expected {} channels, got {}", operation, channels, x.describe()));
  }
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  if (cpu::support::skip_compute(x)) {
    return y;
  }
  const std::int64_t plane = x.size(2) * x.size(3);
  cpu::support::dispatch_float(x.dtype(), [&](auto element) {
    using T = decltype(element);
    const T* in = x.data_as<T>();
    T* out = y.data_as<T>();
    parallel_for(0, channels, 1, [&](std::int64_t first, std::int64_t last) {
      for (std::int64_t c = first; c < last; ++c) {
        for (std::int64_t i = c * plane; i < (c + 1) * plane; ++i) {
          out[i] = from_f32<T>(op(c, to_f32(in[i])));
        }
      }
    });
  });
  return y;
}

}  // namespace

Tensor channels_to_rows(const Tensor& x) {
  require_image("channels_to_rows", x);
  const std::int64_t channels = x.size(1);
  const std::int64_t pixels = x.size(2) * x.size(3);
  Tensor rows = Tensor::empty({pixels, channels}, x.dtype());
  transpose_elements(x, rows, channels, pixels);
  return rows;
}

Tensor rows_to_channels(const Tensor& rows, std::int64_t height, std::int64_t width) {
  if (!rows.defined() || rows.dim() != 2 || rows.size(0) != height * width ||
      !rows.is_contiguous()) {
    throw Error(fmt::format("rows_to_channels: expected a contiguous [{}, C] tensor, got {}",
                            height * width, rows.defined() ? rows.describe() : "undefined"));
  }
  const std::int64_t channels = rows.size(1);
  Tensor x = Tensor::empty({1, channels, height, width}, rows.dtype());
  transpose_elements(rows, x, height * width, channels);
  return x;
}

Tensor upsample_nearest2x_channels_last(const Tensor& x) {
  require_image("upsample_nearest2x_channels_last", x);
  const std::int64_t channels = x.size(1);
  const std::int64_t height = x.size(2);
  const std::int64_t width = x.size(3);
  Tensor storage = Tensor::empty({1, 2 * height, 2 * width, channels}, x.dtype());
  {
    const Tensor rows = channels_to_rows(x);  // [H*W, C]
    if (!cpu::support::skip_compute(rows, storage)) {
      const std::size_t row_bytes = dtype_bytes(x.dtype(), static_cast<std::size_t>(channels));
      const char* in = static_cast<const char*>(rows.data());
      char* out = static_cast<char*>(storage.data());
      // Output pixel (y, x) is input pixel (y / 2, x / 2): one row of C channels each.
      parallel_for(0, 2 * height, 1, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t y = first; y < last; ++y) {
          for (std::int64_t x_index = 0; x_index < 2 * width; ++x_index) {
            const std::int64_t source = (y / 2) * width + x_index / 2;
            std::memcpy(out + static_cast<std::size_t>(y * 2 * width + x_index) * row_bytes,
                        in + static_cast<std::size_t>(source) * row_bytes, row_bytes);
          }
        }
      });
    }
  }
  return storage.permute({0, 3, 1, 2});  // [1, C, 2H, 2W] over [1, 2H, 2W, C] storage
}

void clamp_(Tensor& x, float low, float high) {
  if (!x.defined() || !x.is_contiguous()) {
    throw Error("vae clamp_: expected a contiguous tensor");
  }
  if (cpu::support::skip_compute(x)) {
    return;
  }
  cpu::support::dispatch_float(x.dtype(), [&](auto element) {
    using T = decltype(element);
    T* data = x.data_as<T>();
    parallel_for(0, x.numel(), 1 << 16, [&](std::int64_t first, std::int64_t last) {
      for (std::int64_t i = first; i < last; ++i) {
        // low and high are exact in bf16 here (+-1), so clamping in f32 rounds nothing.
        data[i] = from_f32<T>(std::clamp(to_f32(data[i]), low, high));
      }
    });
  });
}

Tensor crop(const Tensor& x, std::int64_t top, std::int64_t left, std::int64_t height,
            std::int64_t width) {
  require_image("vae crop", x);
  if (top < 0 || left < 0 || height <= 0 || width <= 0 || top + height > x.size(2) ||
      left + width > x.size(3)) {
    throw Error(fmt::format("vae crop: window {}x{} at ({}, {}) is outside {}", height, width, top,
                            left, x.describe()));
  }
  const std::int64_t channels = x.size(1);
  Tensor y = Tensor::empty({1, channels, height, width}, x.dtype());
  if (cpu::support::skip_compute(x)) {
    return y;
  }
  const std::size_t element = dtype_bytes(x.dtype(), 1);
  const char* in = static_cast<const char*>(x.data());
  char* out = static_cast<char*>(y.data());
  const std::int64_t in_width = x.size(3);
  const std::int64_t in_height = x.size(2);
  parallel_for(0, channels * height, 64, [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t row = first; row < last; ++row) {
      const std::int64_t c = row / height;
      const std::int64_t y_index = row % height;
      const std::int64_t source = (c * in_height + top + y_index) * in_width + left;
      std::memcpy(out + static_cast<std::size_t>(row * width) * element,
                  in + static_cast<std::size_t>(source) * element,
                  static_cast<std::size_t>(width) * element);
    }
  });
  return y;
}

Tensor subtract_divide_channels(const Tensor& x, std::span<const float> shift,
                                std::span<const float> divisor) {
  return map_channels("normalize_latents", x, static_cast<std::int64_t>(shift.size()),
                      [&](std::int64_t c, float value) {
                        return (value - shift[static_cast<std::size_t>(c)]) /
                               divisor[static_cast<std::size_t>(c)];
                      });
}

Tensor multiply_add_channels(const Tensor& x, std::span<const float> factor,
                             std::span<const float> shift) {
  return map_channels("denormalize_latents", x, static_cast<std::int64_t>(shift.size()),
                      [&](std::int64_t c, float value) {
                        return value * factor[static_cast<std::size_t>(c)] +
                               shift[static_cast<std::size_t>(c)];
                      });
}

}  // namespace ethereal::vae_ops
