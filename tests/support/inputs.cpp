#include "support/inputs.h"

#include <random>

namespace ethereal::test_support {

std::vector<float> uniform_values(std::size_t count, std::uint32_t seed, float low, float high) {
  std::mt19937 generator(seed);
  std::uniform_real_distribution<float> distribution(low, high);
  std::vector<float> values(count);
  for (float& value : values) {
    value = distribution(generator);
  }
  return values;
}

std::vector<float> normal_values(std::size_t count, std::uint32_t seed, float stddev) {
  std::mt19937 generator(seed);
  std::normal_distribution<float> distribution(0.0f, stddev);
  std::vector<float> values(count);
  for (float& value : values) {
    value = distribution(generator);
  }
  return values;
}

Tensor uniform_tensor(const Shape& shape, DType dtype, std::uint32_t seed, float low, float high) {
  const auto count = static_cast<std::size_t>(shape_numel(shape));
  return Tensor::from_floats(uniform_values(count, seed, low, high), shape, dtype);
}

Tensor normal_tensor(const Shape& shape, DType dtype, std::uint32_t seed, float stddev) {
  const auto count = static_cast<std::size_t>(shape_numel(shape));
  return Tensor::from_floats(normal_values(count, seed, stddev), shape, dtype);
}

Tensor arange_tensor(const Shape& shape, float start, DType dtype) {
  std::vector<float> values(static_cast<std::size_t>(shape_numel(shape)));
  for (std::size_t i = 0; i < values.size(); ++i) {
    values[i] = start + static_cast<float>(i);
  }
  return Tensor::from_floats(values, shape, dtype);
}

std::vector<float> rounded_to_bf16(const std::vector<float>& values) {
  std::vector<float> result(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    result[i] = bf16_to_f32(f32_to_bf16(values[i]));
  }
  return result;
}

}  // namespace ethereal::test_support
