#include "pipeline/latents.h"

#include <cmath>
#include <numbers>
#include <random>
#include <vector>

#include <fmt/format.h>

#include "runtime/error.h"

namespace ethereal {

Tensor gaussian_noise(const Shape& shape, std::uint64_t seed) {
  Tensor noise = Tensor::empty(shape, DType::f32);
  if (noise.is_dry()) {
    return noise;
  }
  std::mt19937_64 generator(seed);
  auto uniform = [&generator]() { return static_cast<double>(generator() >> 11) * 0x1.0p-53; };
  float* out = noise.data_as<float>();
  const std::int64_t count = noise.numel();
  for (std::int64_t i = 0; i < count; i += 2) {
    const double u1 = uniform();
    const double u2 = uniform();
    const double radius = std::sqrt(-2.0 * std::log(1.0 - u1));
    const double angle = 2.0 * std::numbers::pi * u2;
    out[i] = static_cast<float>(radius * std::cos(angle));
    if (i + 1 < count) {
      out[i + 1] = static_cast<float>(radius * std::sin(angle));
    }
  }
  return noise;
}

Tensor pack_latents(const Tensor& latents) {
  if (latents.dim() != 4 || latents.size(2) % 2 != 0 || latents.size(3) % 2 != 0) {
    throw Error("pack_latents: expected [B, C, H, W] with even H and W, got " + latents.describe());
  }
  const std::int64_t b = latents.size(0), c = latents.size(1);
  const std::int64_t h = latents.size(2), w = latents.size(3);
  // [B, C, h/2, 2, w/2, 2] -> [B, h/2, w/2, C, 2, 2]
  Tensor view = latents.contiguous().view({b, c, h / 2, 2, w / 2, 2}).permute({0, 2, 4, 1, 3, 5});
  return view.contiguous().view({b, (h / 2) * (w / 2), c * 4});
}

Tensor unpack_latents(const Tensor& tokens, std::int64_t height, std::int64_t width) {
  if (tokens.dim() != 3 || height % 2 != 0 || width % 2 != 0 ||
      tokens.size(1) != (height / 2) * (width / 2) || tokens.size(2) % 4 != 0) {
    throw Error(fmt::format("unpack_latents: {} does not hold {}x{} latents", tokens.describe(),
                            height, width));
  }
  const std::int64_t b = tokens.size(0), c = tokens.size(2) / 4;
  Tensor view =
      tokens.contiguous().view({b, height / 2, width / 2, c, 2, 2}).permute({0, 3, 1, 4, 2, 5});
  return view.contiguous().view({b, c, height, width});
}

Tensor guided_velocity(const Tensor& cond, const Tensor& uncond, float scale) {
  if (cond.shape() != uncond.shape() || cond.dim() < 1) {
    throw Error(fmt::format("guided_velocity: conditional {} and unconditional {} differ",
                            cond.describe(), uncond.describe()));
  }
  Tensor result = Tensor::empty(cond.shape(), cond.dtype());
  if (result.is_dry() || cond.is_dry() || uncond.is_dry()) {
    return result;
  }
  const std::vector<float> c = cond.to_floats();
  const std::vector<float> u = uncond.to_floats();
  const std::size_t width = static_cast<std::size_t>(cond.size(-1));
  std::vector<float> out(c.size());
  for (std::size_t row = 0; row < c.size() / width; ++row) {
    double cond_norm = 0.0;
    double combined_norm = 0.0;
    for (std::size_t k = row * width; k < (row + 1) * width; ++k) {
      out[k] = u[k] + scale * (c[k] - u[k]);
      cond_norm += static_cast<double>(c[k]) * c[k];
      combined_norm += static_cast<double>(out[k]) * out[k];
    }
    // No epsilon, as in the reference pipeline: a zero combined vector yields NaN there too.
    const auto ratio = static_cast<float>(std::sqrt(cond_norm) / std::sqrt(combined_norm));
    for (std::size_t k = row * width; k < (row + 1) * width; ++k) {
      out[k] *= ratio;
    }
  }
  convert_elements(out.data(), DType::f32, result.data(), result.dtype(), out.size());
  return result;
}

}  // namespace ethereal
