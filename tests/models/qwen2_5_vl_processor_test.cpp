// The Qwen2-VL image processor: patch order, normalisation against the reference rows, and the
// resize step.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "io/resample.h"
#include "io/safetensors.h"
#include "models/qwen2_5_vl/image_processor.h"
#include "qwen2_5_vl_test_support.h"
#include "runtime/allocator.h"
#include "support/errors.h"
#include "support/tensor_compare.h"

namespace ethereal {
namespace {

using qwen2_5_vl_test::image_from_hwc;
using qwen2_5_vl_test::text_encoder_case;
using test_support::error_message;
using test_support::max_abs_diff;

// An image whose red channel is the row, green the column and blue their sum, so every value
// identifies its source pixel.
Image coordinate_image(int width, int height) {
  Image image(width, height, 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      image.at(x, y, 0) = static_cast<std::uint8_t>(y);
      image.at(x, y, 1) = static_cast<std::uint8_t>(x);
      image.at(x, y, 2) = static_cast<std::uint8_t>((x + y) % 256);
    }
  }
  return image;
}

TEST(Qwen2VlImageProcessorTest, PatchOrderFollowsTransformersLayout) {
  Qwen2VlImageProcessorConfig config;
  config.do_rescale = false;
  config.do_normalize = false;
  const Image image = coordinate_image(84, 56);  // 6 x 4 patches, 3 x 2 merged tokens
  const ProcessedImage processed = qwen2vl_patch_rows(image, config);
  ASSERT_EQ(processed.grid, (ImageGrid{1, 4, 6}));
  ASSERT_EQ(processed.pixel_rows.shape(), (Shape{24, 1176}));
  const std::vector<float> rows = processed.pixel_rows.to_floats();

  // transformers: reshape to (t, block_row, merge_row, y, block_col, merge_col, x) and
  // transpose to rows (t, block_row, block_col, merge_row, merge_col) of (c, t, y, x).
  std::size_t mismatches = 0;
  std::int64_t row = 0;
  for (int block_row = 0; block_row < 2; ++block_row) {
    for (int block_col = 0; block_col < 3; ++block_col) {
      for (int merge_row = 0; merge_row < 2; ++merge_row) {
        for (int merge_col = 0; merge_col < 2; ++merge_col, ++row) {
          std::size_t k = static_cast<std::size_t>(row) * 1176;
          for (int c = 0; c < 3; ++c) {
            for (int t = 0; t < 2; ++t) {
              for (int py = 0; py < 14; ++py) {
                for (int px = 0; px < 14; ++px, ++k) {
                  const int y = (block_row * 2 + merge_row) * 14 + py;
                  const int x = (block_col * 2 + merge_col) * 14 + px;
                  mismatches += rows[k] != static_cast<float>(image.at(x, y, c));
                }
              }
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(mismatches, 0u);
}

TEST(Qwen2VlImageProcessorTest, MatchesReferenceRows) {
  // The reference images are already multiples of 28 inside the pixel bounds, so the
  // processor keeps their size. The rows must then equal the reference bit for bit.
  const SafetensorsFile vectors = SafetensorsFile::open(text_encoder_case("vision"));
  const Tensor expected = vectors.tensor("input.pixel_values");
  const ProcessedImage first =
      process_qwen2vl_image(image_from_hwc(vectors.tensor("processor.image0_uint8")), {});
  const ProcessedImage second =
      process_qwen2vl_image(image_from_hwc(vectors.tensor("processor.image1_uint8")), {});
  EXPECT_EQ(first.grid, (ImageGrid{1, 6, 10}));
  EXPECT_EQ(second.grid, (ImageGrid{1, 4, 4}));
  EXPECT_EQ(max_abs_diff(first.pixel_rows, expected.narrow(0, 0, 60)), 0.0f);
  EXPECT_EQ(max_abs_diff(second.pixel_rows, expected.narrow(0, 60, 16)), 0.0f);
}

TEST(Qwen2VlImageProcessorTest, ResizesToSmartResizeSizeWithBicubic) {
  const Image image = coordinate_image(100, 61);
  const Qwen2VlImageProcessorConfig config;
  // smart_resize: 61 -> 56 rows, 100 -> 112 columns (nearest multiples of 28).
  EXPECT_EQ(qwen2vl_processed_size(100, 61, config), (ImageSize{112, 56}));
  const ProcessedImage processed = process_qwen2vl_image(image, config);
  EXPECT_EQ(processed.grid, (ImageGrid{1, 4, 8}));
  const ProcessedImage expected =
      qwen2vl_patch_rows(resize(image, 112, 56, ResampleFilter::kBicubic), config);
  EXPECT_EQ(max_abs_diff(processed.pixel_rows, expected.pixel_rows), 0.0f);
}

TEST(Qwen2VlImageProcessorTest, GrayAndAlphaBecomeRgb) {
  // 56 x 56: the smallest size that smart_resize keeps (min_pixels = 56^2).
  Image gray(56, 56, 1);
  for (int i = 0; i < 56 * 56; ++i) {
    gray.pixels()[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(i % 251);
  }
  Image rgba(56, 56, 4);
  for (int i = 0; i < 56 * 56 * 4; ++i) {
    rgba.pixels()[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>((i * 7) % 256);
  }
  const Qwen2VlImageProcessorConfig config;
  for (const Image& image : {gray, rgba}) {
    SCOPED_TRACE(image.channels());
    const ProcessedImage processed = process_qwen2vl_image(image, config);
    const ProcessedImage expected = qwen2vl_patch_rows(to_rgb(image), config);
    EXPECT_EQ(max_abs_diff(processed.pixel_rows, expected.pixel_rows), 0.0f);
  }
}

TEST(Qwen2VlImageProcessorTest, NormalisesWithClipStatistics) {
  Image image(28, 28, 3);
  std::fill(image.pixels().begin(), image.pixels().end(), 200);
  const ProcessedImage processed = qwen2vl_patch_rows(image, {});
  const std::vector<float> rows = processed.pixel_rows.to_floats();
  // Row values are (channel, frame, y, x): 392 values per channel.
  const float red = (static_cast<float>(200.0 / 255.0) - 0.48145466f) / 0.26862954f;
  const float blue = (static_cast<float>(200.0 / 255.0) - 0.40821073f) / 0.27577711f;
  EXPECT_FLOAT_EQ(rows[0], red);
  EXPECT_FLOAT_EQ(rows[391], red);
  EXPECT_FLOAT_EQ(rows[2 * 392], blue);
}

TEST(Qwen2VlImageProcessorTest, RejectsImagesThatCannotBePatched) {
  const Qwen2VlImageProcessorConfig config;
  std::string message =
      error_message([&] { qwen2vl_patch_rows(coordinate_image(30, 28), config); });
  EXPECT_NE(message.find("30x28"), std::string::npos) << message;
  EXPECT_NE(message.find("multiples of 28"), std::string::npos) << message;
  message = error_message([&] { process_qwen2vl_image(coordinate_image(20, 40), config); });
  EXPECT_NE(message.find("too small"), std::string::npos) << message;
  message = error_message([&] { process_qwen2vl_image(Image(), config); });
  EXPECT_NE(message.find("empty"), std::string::npos) << message;
}

TEST(Qwen2VlImageProcessorTest, DryRunAllocatesRows) {
  CpuCachingAllocator dry({.dry_run = true});
  ScopedAllocator scope(dry);
  const ProcessedImage processed = process_qwen2vl_image(coordinate_image(56, 84), {});
  EXPECT_TRUE(processed.pixel_rows.is_dry());
  EXPECT_EQ(processed.pixel_rows.shape(), (Shape{24, 1176}));
  EXPECT_EQ(dry.stats().allocated_bytes.current,
            static_cast<std::int64_t>(CpuCachingAllocator::round_size(24 * 1176 * 4)));
}

}  // namespace
}  // namespace ethereal
