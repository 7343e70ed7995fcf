// Test inputs: seeded uniform and normal values from std::mt19937, as vectors or tensors, and
// counting sequences.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "runtime/dtype.h"
#include "runtime/tensor.h"

namespace ethereal::test_support {

// Values uniform in [low, high) from std::mt19937 seeded with `seed`.
std::vector<float> uniform_values(std::size_t count, std::uint32_t seed, float low = -1.0f,
                                  float high = 1.0f);

// Values from a normal distribution with mean 0 and `stddev`, from std::mt19937 seeded with
// `seed`. The default 0.02 is the scale of trained transformer weights.
std::vector<float> normal_values(std::size_t count, std::uint32_t seed, float stddev = 0.02f);

// A tensor of uniform_values stored in `dtype` (bf16 rounds to nearest even).
Tensor uniform_tensor(const Shape& shape, DType dtype, std::uint32_t seed, float low = -1.0f,
                      float high = 1.0f);

// A tensor of normal_values stored in `dtype`.
Tensor normal_tensor(const Shape& shape, DType dtype, std::uint32_t seed, float stddev = 0.02f);

// A tensor whose elements in row-major order are start, start + 1, start + 2, ...
Tensor arange_tensor(const Shape& shape, float start, DType dtype = DType::f32);

// `values` as they read back after a round trip through bf16 (to nearest even).
std::vector<float> rounded_to_bf16(const std::vector<float>& values);

}  // namespace ethereal::test_support
