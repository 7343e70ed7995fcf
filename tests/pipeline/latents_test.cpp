#include "pipeline/latents.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "runtime/error.h"

namespace ethereal {
namespace {

TEST(GaussianNoise, IsDeterministicAndStandard) {
  Tensor a = gaussian_noise({1, 16, 33, 17}, 42);
  Tensor b = gaussian_noise({1, 16, 33, 17}, 42);
  Tensor c = gaussian_noise({1, 16, 33, 17}, 43);
  const std::vector<float> va = a.to_floats();
  EXPECT_EQ(va, b.to_floats());
  EXPECT_NE(va, c.to_floats());
  double sum = 0.0, squares = 0.0;
  for (float v : va) {
    sum += v;
    squares += static_cast<double>(v) * v;
  }
  const double n = static_cast<double>(va.size());
  EXPECT_NEAR(sum / n, 0.0, 0.05);
  EXPECT_NEAR(squares / n, 1.0, 0.05);
}

TEST(GaussianNoise, FirstValuesAreDocumentedGenerator) {
  // The first pair from std::mt19937_64 seeded with 0, by the Box-Muller rule in latents.h.
  std::mt19937_64 generator(0);
  const double u1 = static_cast<double>(generator() >> 11) * 0x1.0p-53;
  const double u2 = static_cast<double>(generator() >> 11) * 0x1.0p-53;
  const double radius = std::sqrt(-2.0 * std::log(1.0 - u1));
  const std::vector<float> noise = gaussian_noise({3}, 0).to_floats();
  EXPECT_EQ(noise[0], static_cast<float>(radius * std::cos(2.0 * M_PI * u2)));
  EXPECT_EQ(noise[1], static_cast<float>(radius * std::sin(2.0 * M_PI * u2)));
}

TEST(PackLatents, OrdersChannelsAsPatchOffsets) {
  // [1, 2, 2, 4]: channel c, row y, column x holds 100 c + 10 y + x.
  std::vector<float> values;
  for (int c = 0; c < 2; ++c)
    for (int y = 0; y < 2; ++y)
      for (int x = 0; x < 4; ++x)
        values.push_back(100.0f * c + 10.0f * y + x);
  Tensor latents = Tensor::from_floats(values, {1, 2, 2, 4});
  Tensor packed = pack_latents(latents);
  ASSERT_EQ(packed.shape(), (Shape{1, 2, 8}));
  // Token 1 covers columns 2..3; channel index c*4 + dy*2 + dx.
  const std::vector<float> expected_token1 = {2, 3, 12, 13, 102, 103, 112, 113};
  const std::vector<float> all = packed.to_floats();
  EXPECT_EQ(std::vector<float>(all.begin() + 8, all.end()), expected_token1);
  EXPECT_EQ(unpack_latents(packed, 2, 4).to_floats(), values);
}

TEST(PackLatents, RejectsOddSizes) {
  EXPECT_THROW(pack_latents(Tensor::zeros({1, 16, 3, 4}, DType::f32)), Error);
  EXPECT_THROW(unpack_latents(Tensor::zeros({1, 6, 64}, DType::f32), 4, 4), Error);
}

TEST(GuidedVelocity, RescalesToConditionalNorm) {
  const std::vector<float> cond = {3.0f, 4.0f, 1.0f, 0.0f};
  const std::vector<float> uncond = {1.0f, 0.0f, 0.0f, 1.0f};
  Tensor result =
      guided_velocity(Tensor::from_floats(cond, {2, 2}), Tensor::from_floats(uncond, {2, 2}), 4.0f);
  const std::vector<float> out = result.to_floats();
  // Token 0: combined (9, 16), |cond| = 5, |combined| = sqrt(337).
  const float ratio0 = 5.0f / std::sqrt(337.0f);
  EXPECT_NEAR(out[0], 9.0f * ratio0, 1e-6);
  EXPECT_NEAR(out[1], 16.0f * ratio0, 1e-6);
  // Token 1: combined (4, -3), |cond| = 1, |combined| = 5.
  EXPECT_NEAR(out[2], 0.8f, 1e-6);
  EXPECT_NEAR(out[3], -0.6f, 1e-6);
}

}  // namespace
}  // namespace ethereal
