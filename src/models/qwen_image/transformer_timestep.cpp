#include "models/qwen_image/transformer_timestep.h"

#include <cmath>

namespace ethereal {

float model_sigma(double sigma, DType compute_dtype) {
  const auto as_f32 = static_cast<float>(sigma);
  if (compute_dtype == DType::bf16) {
    return bf16_to_f32(f32_to_bf16(as_f32));
  }
  return as_f32;
}

std::vector<float> timestep_sinusoid(float sigma) {
  constexpr std::int64_t kHalf = kTimestepChannels / 2;
  // diffusers: exponent = f32(-ln(10000)) * k / half, freq = exp(exponent), angle = 1000 *
  // (t * freq), each step rounded to f32.
  const auto log_period = static_cast<float>(-std::log(10000.0));
  std::vector<float> features(kTimestepChannels);
  for (std::int64_t k = 0; k < kHalf; ++k) {
    const float exponent = log_period * static_cast<float>(k) / static_cast<float>(kHalf);
    const auto frequency = static_cast<float>(std::exp(static_cast<double>(exponent)));
    const float angle = 1000.0f * (sigma * frequency);
    features[k] = static_cast<float>(std::cos(static_cast<double>(angle)));
    features[kHalf + k] = static_cast<float>(std::sin(static_cast<double>(angle)));
  }
  return features;
}

}  // namespace ethereal
