#include "models/qwen_image/vae_tiling.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "models/qwen_image/vae.h"
#include "runtime/error.h"
#include "support/inputs.h"
#include "vae_test_support.h"

namespace ethereal {
namespace {

using test_support::uniform_tensor;
using vae_test::difference;
using vae_test::Difference;

// Nearest-neighbour upsampling by `factor`: a stand-in decoder whose output at a pixel depends
// only on the latent under it, so tiling must reproduce it exactly.
Tensor upsample_by(const Tensor& x, std::int64_t factor) {
  const std::int64_t channels = x.size(1);
  const std::int64_t height = x.size(2);
  const std::int64_t width = x.size(3);
  const std::vector<float> in = x.to_floats();
  std::vector<float> out(static_cast<std::size_t>(channels * height * width * factor * factor));
  for (std::int64_t c = 0; c < channels; ++c) {
    for (std::int64_t y = 0; y < height * factor; ++y) {
      for (std::int64_t x_index = 0; x_index < width * factor; ++x_index) {
        out[static_cast<std::size_t>((c * height * factor + y) * width * factor + x_index)] =
            in[static_cast<std::size_t>((c * height + y / factor) * width + x_index / factor)];
      }
    }
  }
  return Tensor::from_floats(out, {1, channels, height * factor, width * factor});
}

// Average pooling over factor x factor blocks: a stand-in encoder.
Tensor average_pool(const Tensor& x, std::int64_t factor) {
  const std::int64_t channels = x.size(1);
  const std::int64_t height = x.size(2) / factor;
  const std::int64_t width = x.size(3) / factor;
  const std::vector<float> in = x.to_floats();
  std::vector<float> out(static_cast<std::size_t>(channels * height * width), 0.0f);
  for (std::int64_t c = 0; c < channels; ++c) {
    for (std::int64_t y = 0; y < height * factor; ++y) {
      for (std::int64_t x_index = 0; x_index < width * factor; ++x_index) {
        out[static_cast<std::size_t>((c * height + y / factor) * width + x_index / factor)] +=
            in[static_cast<std::size_t>((c * x.size(2) + y) * x.size(3) + x_index)] /
            static_cast<float>(factor * factor);
      }
    }
  }
  return Tensor::from_floats(out, {1, channels, height, width});
}

TEST(VaeTiling, RejectsInvalidTileSizes) {
  const auto message_of = [](const VaeTiling& tiling) {
    try {
      TileGrid::for_decode(tiling, 8);
    } catch (const InvalidInputError& error) {
      return std::string(error.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(message_of({.enabled = true, .tile_px = 100, .overlap_px = 16}).find("tile size 100"),
            std::string::npos);
  EXPECT_NE(message_of({.enabled = true, .tile_px = 64, .overlap_px = 64}).find("overlap 64"),
            std::string::npos);
  EXPECT_NE(message_of({.enabled = true, .tile_px = 64, .overlap_px = 12}).find("overlap 12"),
            std::string::npos);
  const TileGrid decode = TileGrid::for_decode({}, 8);
  EXPECT_EQ(decode.input_tile, 32);
  EXPECT_EQ(decode.input_stride, 24);
  EXPECT_EQ(decode.output_stride, 192);
  EXPECT_EQ(decode.output_blend, 64);
  const TileGrid encode = TileGrid::for_encode({}, 8);
  EXPECT_EQ(encode.input_tile, 256);
  EXPECT_EQ(encode.input_stride, 192);
  EXPECT_EQ(encode.output_stride, 24);
  EXPECT_EQ(encode.output_blend, 8);
}

TEST(VaeTiling, LocalDecoderIsReproducedExactly) {
  // 13 x 21 latents with 64 px tiles every 40 px (5 latents): a 3 x 5 grid with cut edge tiles.
  const Tensor latents = uniform_tensor({1, 2, 13, 21}, DType::f32, 7);
  const TileGrid grid = TileGrid::for_decode({.enabled = true, .tile_px = 64, .overlap_px = 24}, 8);
  int tiles = 0;
  const Tensor tiled = run_tiled(latents, grid, [&](const Tensor& tile) {
    ++tiles;
    return upsample_by(tile, 8);
  });
  EXPECT_EQ(tiles, 3 * 5);
  // Blending equal values a (1 - t) + a t in f32 is exact to one rounding.
  const Difference d = difference(tiled, upsample_by(latents, 8));
  EXPECT_LE(d.max_abs, 2e-7);
}

TEST(VaeTiling, LocalEncoderIsReproducedExactly) {
  const Tensor image = uniform_tensor({1, 3, 72, 120}, DType::f32, 8);
  const TileGrid grid = TileGrid::for_encode({.enabled = true, .tile_px = 32, .overlap_px = 16}, 8);
  const Tensor tiled =
      run_tiled(image, grid, [](const Tensor& tile) { return average_pool(tile, 8); });
  const Difference d = difference(tiled, average_pool(image, 8));
  EXPECT_LE(d.max_abs, 2e-7);
}

TEST(VaeTiling, BlendsLinearlyAcrossOverlaps) {
  // Each tile returns a constant: its index in row-major visiting order. 10 latents = 80 px
  // wide, 64 px tiles every 32 px: tiles at 0, 32, 64 px, 64, 48 and 16 px wide.
  const Tensor latents = Tensor::zeros({1, 1, 1, 10}, DType::f32);
  const TileGrid grid = TileGrid::for_decode({.enabled = true, .tile_px = 64, .overlap_px = 32}, 8);
  float next_value = 0.0f;
  const Tensor tiled = run_tiled(latents, grid, [&](const Tensor& tile) {
    const Shape shape = {1, 1, tile.size(2) * 8, tile.size(3) * 8};
    std::vector<float> values(static_cast<std::size_t>(shape_numel(shape)), next_value);
    next_value += 1.0f;
    return Tensor::from_floats(values, shape);
  });
  const std::vector<float> row = tiled.to_floats();  // first of 8 identical rows
  ASSERT_EQ(tiled.shape(), (Shape{1, 1, 8, 80}));
  EXPECT_FLOAT_EQ(row[0], 0.0f);
  EXPECT_FLOAT_EQ(row[31], 0.0f);
  // Tile 1 fades in over 32 px: x / 32 at its x-th column.
  EXPECT_FLOAT_EQ(row[32], 0.0f);
  EXPECT_FLOAT_EQ(row[40], 8.0f / 32.0f);
  EXPECT_FLOAT_EQ(row[63], 31.0f / 32.0f);
  // Tile 2 is 16 px wide, so the blend shrinks to 16 px against tile 1's last 16 columns.
  EXPECT_FLOAT_EQ(row[64], 1.0f);
  EXPECT_FLOAT_EQ(row[70], 1.0f + 6.0f / 16.0f);
  EXPECT_FLOAT_EQ(row[79], 1.0f + 15.0f / 16.0f);
}

TEST(VaeTiling, BlendsVerticallyWithBlendedTileAbove) {
  // 2 x 2 tiles of 64 px every 32 px over 48 x 48 px: values 0, 1 (top), 2, 3 (bottom).
  const Tensor latents = Tensor::zeros({1, 1, 6, 6}, DType::f32);
  const TileGrid grid = TileGrid::for_decode({.enabled = true, .tile_px = 64, .overlap_px = 32}, 8);
  float next_value = 0.0f;
  const Tensor tiled = run_tiled(latents, grid, [&](const Tensor& tile) {
    const Shape shape = {1, 1, tile.size(2) * 8, tile.size(3) * 8};
    std::vector<float> values(static_cast<std::size_t>(shape_numel(shape)), next_value);
    next_value += 1.0f;
    return Tensor::from_floats(values, shape);
  });
  const std::vector<float> v = tiled.to_floats();
  const auto at = [&](int y, int x) { return v[static_cast<std::size_t>(y * 48 + x)]; };
  // Bottom tiles are 16 px tall: blend extent 16. Column 0 lies in the left tiles only.
  EXPECT_FLOAT_EQ(at(32, 0), 0.0f);
  EXPECT_FLOAT_EQ(at(40, 0), 0.0f * 0.5f + 2.0f * 0.5f);
  // Column 40: the top-right tile (1) was blended with tile 0 over its first 16 columns
  // (tile width 16): 0 (1 - 8/16) + 1 (8/16) = 0.5 there. The bottom-right tile (3) first
  // fades from that vertically, then from the blended bottom-left tile horizontally.
  const float top = 0.5f;
  const float left_bottom_at_row_44 = 0.0f * (1.0f - 12.0f / 16.0f) + 2.0f * (12.0f / 16.0f);
  const float vertical = top * (1.0f - 12.0f / 16.0f) + 3.0f * (12.0f / 16.0f);
  EXPECT_FLOAT_EQ(at(44, 40),
                  left_bottom_at_row_44 * (1.0f - 8.0f / 16.0f) + vertical * (8.0f / 16.0f));
}

// ---------------------------------------------------------------------------------------
// The tiny model: tiling limits each tile's convolutions and mid-block attention to the tile,
// so tiled and untiled results differ. Blending keeps the difference small and the seams
// smooth.

class VaeModelTilingTest : public ::testing::Test {
 protected:
  static const QwenImageVae& vae() {
    static const QwenImageVae model =
        QwenImageVae::load_directory(vae_test::tiny_vae_dir(), ModelPrecision::f32());
    return model;
  }
};

TEST_F(VaeModelTilingTest, SingleTileEqualsUntiled) {
  const Tensor latents = uniform_tensor({1, 16, 5, 7}, DType::f32, 11, -2.0f, 2.0f);
  VaeMemoryOptions tiled;
  // Tiles start every 112 px (14 latents), so one tile covers both inputs.
  tiled.tiling = {.enabled = true, .tile_px = 128, .overlap_px = 16};
  EXPECT_EQ(vae().decode(latents, tiled).to_floats(), vae().decode(latents).to_floats());
  const Tensor image = uniform_tensor({1, 3, 40, 56}, DType::f32, 12);
  EXPECT_EQ(vae().encode(image, tiled).to_floats(), vae().encode(image).to_floats());
}

TEST_F(VaeModelTilingTest, AttentionQueryTileDoesNotChangeResult) {
  const Tensor latents = uniform_tensor({1, 16, 6, 5}, DType::f32, 13, -2.0f, 2.0f);
  VaeMemoryOptions small_tiles;
  small_tiles.attention_query_tile = 3;
  const Difference d = difference(vae().decode(latents, small_tiles), vae().decode(latents));
  EXPECT_LE(d.max_abs, 1e-5);
}

// Mean absolute difference between horizontally adjacent pixels across the seam columns
// `stride`, 2 * stride, ... (pixel x - 1 to x), over all rows and channels.
double seam_jump(const Tensor& image, std::int64_t stride) {
  const std::vector<float> v = image.to_floats();
  const std::int64_t rows = image.size(1) * image.size(2);
  const std::int64_t width = image.size(3);
  double sum = 0.0;
  std::int64_t count = 0;
  for (std::int64_t col = stride; col < width; col += stride) {
    for (std::int64_t row = 0; row < rows; ++row) {
      const std::size_t i = static_cast<std::size_t>(row * width + col);
      sum += std::fabs(static_cast<double>(v[i]) - static_cast<double>(v[i - 1]));
      ++count;
    }
  }
  return sum / static_cast<double>(count);
}

// The tiny model has random weights, so its tiles depend more on their context than a
// trained VAE's would. The bounds below hold with a margin over the measured values.
TEST_F(VaeModelTilingTest, TiledDecodeHasSmoothSeams) {
  // 12 x 14 latents (96 x 112 px). Blended: 64 px tiles every 32 px (a 3 x 4 grid). Butted:
  // 32 px tiles without overlap (the same seam columns 32, 64, 96, without blending).
  const Tensor latents = uniform_tensor({1, 16, 12, 14}, DType::f32, 14, -2.0f, 2.0f);
  const Tensor reference = vae().decode(latents);
  VaeMemoryOptions blended;
  blended.tiling = {.enabled = true, .tile_px = 64, .overlap_px = 32};
  VaeMemoryOptions butted;
  butted.tiling = {.enabled = true, .tile_px = 32, .overlap_px = 0};
  const Tensor smooth = vae().decode(latents, blended);
  const Tensor seamed = vae().decode(latents, butted);

  // Measured: mean 0.067 (blended) and 0.173 (butted) against the untiled decode, pixel range
  // [-1, 1].
  const Difference smooth_error = difference(smooth, reference);
  const Difference seamed_error = difference(seamed, reference);
  EXPECT_LE(smooth_error.mean_abs, 0.1);
  EXPECT_LT(smooth_error.mean_abs, 0.5 * seamed_error.mean_abs);

  // Step between neighbouring pixels across the seam columns. Measured: untiled 0.107,
  // blended 0.106, butted 0.228. A seam shows as a step well above the untiled image's.
  const double untiled_step = seam_jump(reference, 32);
  EXPECT_LE(seam_jump(smooth, 32), 1.25 * untiled_step);
  EXPECT_GE(seam_jump(seamed, 32), 1.5 * untiled_step) << "the seam measure must see hard seams";
}

TEST_F(VaeModelTilingTest, TiledEncodeStaysCloseToUntiled) {
  // 96 x 128 px; 64 px tiles every 32 px (a 3 x 4 grid) against 32 px tiles without overlap.
  const Tensor image = uniform_tensor({1, 3, 96, 128}, DType::f32, 15);
  const Tensor reference = vae().encode(image);
  VaeMemoryOptions blended;
  blended.tiling = {.enabled = true, .tile_px = 64, .overlap_px = 32};
  VaeMemoryOptions butted;
  butted.tiling = {.enabled = true, .tile_px = 32, .overlap_px = 0};
  const Difference smooth = difference(vae().encode(image, blended), reference);
  const Difference seamed = difference(vae().encode(image, butted), reference);
  // Measured: max 0.42 and mean 0.053 (blended), mean 0.187 (butted); largest |mean| 1.39.
  EXPECT_LE(smooth.max_abs, 0.6);
  EXPECT_LE(smooth.mean_abs, 0.08);
  EXPECT_LT(smooth.mean_abs, 0.5 * seamed.mean_abs);
}

}  // namespace
}  // namespace ethereal
