// The sinusoidal timestep features of the Qwen-Image transformer (diffusers Timesteps with
// num_channels 256, flip_sin_to_cos true, downscale_freq_shift 0, scale 1000).
//
// For sigma t, a_k = 1000 * (t * f_k) with f_k = exp(-ln(10000) * k / 128), k = 0 ... 127, and
// the features are [cos(a_0) ... cos(a_127), sin(a_0) ... sin(a_127)] (cos first). The
// arithmetic follows diffusers' f32 order of operations.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/dtype.h"

namespace ethereal {

inline constexpr std::int64_t kTimestepChannels = 256;

// Returns the sigma the transformer embeds. diffusers casts the timestep to the model dtype
// before the sinusoid, so a bf16 model embeds sigma rounded to bf16 (to nearest even) and an
// f32 model embeds sigma rounded to f32. Earlier roundings in the pipeline (the bf16 timestep
// t = 1000 sigma, divided by 1000 in bf16) are the caller's responsibility.
float model_sigma(double sigma, DType compute_dtype);

// The kTimestepChannels features of one sigma (already rounded by model_sigma).
std::vector<float> timestep_sinusoid(float sigma);

}  // namespace ethereal
