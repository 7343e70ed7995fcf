// Window order, M-RoPE position ids and rotary tables of Qwen2.5-VL, on hand-checked cases and
// against the reference's intermediates.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "io/safetensors.h"
#include "models/qwen2_5_vl/config.h"
#include "models/qwen2_5_vl/positions.h"
#include "qwen2_5_vl_test_support.h"
#include "runtime/allocator.h"
#include "support/errors.h"

namespace ethereal {
namespace {

using qwen2_5_vl_test::grids_of;
using qwen2_5_vl_test::int64_values;
using qwen2_5_vl_test::text_encoder_case;
using qwen2_5_vl_test::tiny_text_encoder_dir;
using test_support::error_message;

using Ids = std::vector<std::int64_t>;

Qwen25VlConfig tiny_config() {
  return Qwen25VlConfig::from_file(tiny_text_encoder_dir() / "config.json");
}

TEST(Qwen25VlWindowTest, TinyGridsByHand) {
  // Window 56 px = 2 merged tokens. Image 0: merged 3 x 5, padded to 4 x 6, 2 x 3 windows.
  // Image 1: merged 2 x 2, padded by a whole window to 4 x 4; only its first window is used.
  const std::vector<ImageGrid> grids = {{1, 6, 10}, {1, 4, 4}};
  const VisionWindowLayout layout = vision_window_layout(grids, tiny_config().vision);
  EXPECT_EQ(layout.window_index,
            (Ids{0, 1, 5, 6, 2, 3, 7, 8, 4, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18}));
  EXPECT_EQ(layout.cu_window_seqlens, (Ids{0, 16, 32, 40, 48, 56, 60, 76}));
  EXPECT_EQ(layout.cu_seqlens, (Ids{0, 60, 76}));
  EXPECT_EQ(layout.patch_count(), 76);
}

TEST(Qwen25VlWindowTest, DivisibleGridGainsEmptyWindows) {
  const Qwen25VlVisionConfig config;  // window 112 px = 4 merged tokens
  {
    const std::vector<ImageGrid> grids = {{1, 8, 8}};  // merged 4 x 4, padded to 8 x 8
    const VisionWindowLayout layout = vision_window_layout(grids, config);
    EXPECT_EQ(layout.window_index, (Ids{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}));
    EXPECT_EQ(layout.cu_window_seqlens, (Ids{0, 64}));
  }
  {
    const std::vector<ImageGrid> grids = {{1, 16, 8}};  // merged 8 x 4: 3 x 2 windows
    const VisionWindowLayout layout = vision_window_layout(grids, config);
    Ids expected(32);
    for (std::int64_t i = 0; i < 32; ++i) {
      expected[static_cast<std::size_t>(i)] = i;
    }
    EXPECT_EQ(layout.window_index, expected);
    EXPECT_EQ(layout.cu_window_seqlens, (Ids{0, 64, 128}));
  }
}

TEST(Qwen25VlWindowTest, SevenBGridOf392Pixels) {
  // 392 x 392 pixels: 28 x 28 patches, merged 14 x 14, windows of 4: 4 x 4 windows whose last
  // row and column hold 2 merged tokens each.
  const std::vector<ImageGrid> grids = {{1, 28, 28}};
  const VisionWindowLayout layout = vision_window_layout(grids, Qwen25VlVisionConfig{});
  ASSERT_EQ(layout.window_index.size(), 196u);
  EXPECT_EQ((Ids(layout.window_index.begin(), layout.window_index.begin() + 6)),
            (Ids{0, 1, 2, 3, 14, 15}));
  EXPECT_EQ((Ids(layout.window_index.end() - 4, layout.window_index.end())),
            (Ids{180, 181, 194, 195}));
  ASSERT_EQ(layout.cu_window_seqlens.size(), 17u);
  EXPECT_EQ(layout.cu_window_seqlens[1], 64);   // 16 merged tokens x 4 patches
  EXPECT_EQ(layout.cu_window_seqlens[4], 224);  // 3 full windows + one of 4 x 2 tokens
  EXPECT_EQ(layout.cu_window_seqlens.back(), 784);
}

TEST(Qwen25VlWindowTest, FramesAreSeparateSegments) {
  const std::vector<ImageGrid> grids = {{2, 4, 4}};
  const VisionWindowLayout layout = vision_window_layout(grids, tiny_config().vision);
  EXPECT_EQ(layout.window_index, (Ids{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(layout.cu_window_seqlens, (Ids{0, 16, 32}));
  EXPECT_EQ(layout.cu_seqlens, (Ids{0, 16, 32}));
}

TEST(Qwen25VlWindowTest, MatchesReferenceIntermediates) {
  const SafetensorsFile vectors = SafetensorsFile::open(text_encoder_case("vision"));
  const std::vector<ImageGrid> grids = grids_of(vectors.tensor("input.image_grid_thw"));
  const VisionWindowLayout layout = vision_window_layout(grids, tiny_config().vision);
  EXPECT_EQ(layout.window_index, int64_values(vectors.tensor("intermediate.window_index")));
  EXPECT_EQ(layout.cu_window_seqlens,
            int64_values(vectors.tensor("intermediate.cu_window_seqlens")));
  EXPECT_EQ(layout.cu_seqlens, int64_values(vectors.tensor("intermediate.cu_seqlens")));
}

TEST(Qwen25VlWindowTest, RejectsGridsNotMultipleOfMerge) {
  const std::vector<ImageGrid> grids = {{1, 4, 4}, {1, 5, 4}};
  const std::string message =
      error_message([&] { vision_window_layout(grids, tiny_config().vision); });
  EXPECT_NE(message.find("image grid 1 is (1, 5, 4)"), std::string::npos) << message;
  EXPECT_NE(message.find("spatial merge size 2"), std::string::npos) << message;
}

// A prompt [text, vision_start, image x count, vision_end, text, text].
Ids prompt_with_image(const Qwen25VlConfig& config, std::int64_t count) {
  Ids ids = {5, config.vision_start_token_id};
  ids.insert(ids.end(), static_cast<std::size_t>(count), config.image_token_id);
  ids.insert(ids.end(), {config.vision_end_token_id, 6, 7});
  return ids;
}

TEST(Qwen25VlPositionIdsTest, HandCheckedImageSpan) {
  const Qwen25VlConfig config = tiny_config();
  const Ids ids = prompt_with_image(config, 6);
  const std::vector<ImageGrid> grids = {{1, 4, 6}};  // merged 2 rows x 3 columns
  const Tensor positions = mrope_position_ids(ids, grids, config);
  ASSERT_EQ(positions.shape(), (Shape{3, 11}));
  // Image tokens start at 2; the token after the image continues at 2 + max(2, 3) = 5.
  EXPECT_EQ(int64_values(positions), (Ids{0, 1, 2, 2, 2, 2, 2, 2, 5, 6, 7,     // t
                                          0, 1, 2, 2, 2, 3, 3, 3, 5, 6, 7,     // h
                                          0, 1, 2, 3, 4, 2, 3, 4, 5, 6, 7}));  // w
}

TEST(Qwen25VlPositionIdsTest, BackedByMemoryInDryRun) {
  const Qwen25VlConfig config = tiny_config();
  CpuCachingAllocator dry({.dry_run = true});
  ScopedAllocator scope(dry);
  const std::vector<ImageGrid> grids = {{1, 2, 2}};
  const Tensor positions = mrope_position_ids(prompt_with_image(config, 1), grids, config);
  ASSERT_FALSE(positions.is_dry());
  EXPECT_EQ(int64_values(positions)[2], 2);
}

TEST(Qwen25VlPositionIdsTest, MatchesReference) {
  const SafetensorsFile vectors = SafetensorsFile::open(text_encoder_case("language_model"));
  const Ids ids = int64_values(vectors.tensor("input.input_ids"));
  const std::vector<ImageGrid> grids = grids_of(vectors.tensor("input.image_grid_thw"));
  const Tensor positions = mrope_position_ids(ids, grids, tiny_config());
  EXPECT_EQ(int64_values(positions), int64_values(vectors.tensor("intermediate.position_ids")));
}

TEST(Qwen25VlPositionIdsTest, RejectsPromptsThatDoNotMatchGrids) {
  const Qwen25VlConfig config = tiny_config();
  const std::vector<ImageGrid> one = {{1, 4, 6}};
  const std::vector<ImageGrid> two = {{1, 4, 6}, {1, 2, 2}};
  Ids no_start = prompt_with_image(config, 6);
  no_start[1] = 9;
  Ids video = prompt_with_image(config, 6);
  video.push_back(config.video_token_id);
  Ids stray = prompt_with_image(config, 6);
  stray.push_back(config.image_token_id);
  const std::vector<std::pair<std::function<void()>, std::string>> cases = {
      {[&] { mrope_position_ids(prompt_with_image(config, 5), one, config); },
       "has 5 image tokens (id 630) at position 2, but its grid (1, 4, 6) needs 6"},
      {[&] { mrope_position_ids(no_start, one, config); }, "do not follow a vision-start token"},
      {[&] { mrope_position_ids(prompt_with_image(config, 6), two, config); },
       "2 image grids were given but the prompt has image tokens (id 630) for only 1"},
      {[&] { mrope_position_ids(stray, one, config); }, "beyond the 1 images"},
      {[&] { mrope_position_ids(video, one, config); }, "video tokens (id 631)"},
  };
  for (const auto& [action, fragment] : cases) {
    SCOPED_TRACE(fragment);
    const std::string message = error_message(action);
    EXPECT_NE(message.find(fragment), std::string::npos) << message;
  }
}

TEST(Qwen25VlRopeTablesTest, TextAnglesFollowMropeSections) {
  const Qwen25VlConfig config = tiny_config();       // head_dim 8, sections [1, 1, 2]
  const std::vector<std::int64_t> rows = {2, 3, 5};  // (t, h, w) of one token
  const Tensor positions =
      Tensor::from_blob(const_cast<std::int64_t*>(rows.data()), {3, 1}, DType::int64, nullptr);
  const Qwen25VlRopeTables tables = text_rope_tables(positions, config.text, false);
  ASSERT_EQ(tables.cos.shape(), (Shape{1, 4}));
  // inv_freq_j = 1e6^(-2j / 8): 1, 10^-1.5, 10^-3, 10^-4.5.
  const double angles[4] = {2.0, 3.0 * std::pow(10.0, -1.5), 5.0e-3, 5.0 * std::pow(10.0, -4.5)};
  const std::vector<float> cos = tables.cos.to_floats();
  const std::vector<float> sin = tables.sin.to_floats();
  for (int j = 0; j < 4; ++j) {
    EXPECT_NEAR(cos[j], std::cos(angles[j]), 1e-6) << j;
    EXPECT_NEAR(sin[j], std::sin(angles[j]), 1e-6) << j;
  }
  const Qwen25VlRopeTables rounded = text_rope_tables(positions, config.text, true);
  for (int j = 0; j < 4; ++j) {
    EXPECT_EQ(rounded.cos.to_floats()[j], bf16_to_f32(f32_to_bf16(cos[j]))) << j;
  }
}

TEST(Qwen25VlRopeTablesTest, VisionAnglesUseRowThenColumn) {
  const Qwen25VlVisionConfig config = tiny_config().vision;  // head_dim 16: 4 frequencies
  const double inv_freq[4] = {1.0, 0.1, 0.01, 0.001};        // 10000^(-2j / 8)
  auto expect_patch = [&](const Qwen25VlRopeTables& tables, std::int64_t index, int row,
                          int column) {
    const std::vector<float> cos = tables.cos.to_floats();
    const std::vector<float> sin = tables.sin.to_floats();
    for (int j = 0; j < 8; ++j) {
      const double angle = (j < 4 ? row : column) * inv_freq[j % 4];
      EXPECT_NEAR(cos[static_cast<std::size_t>(index * 8 + j)], std::cos(angle), 1e-6)
          << index << " " << j;
      EXPECT_NEAR(sin[static_cast<std::size_t>(index * 8 + j)], std::sin(angle), 1e-6)
          << index << " " << j;
    }
  };
  {
    const std::vector<ImageGrid> grids = {{1, 2, 2}};
    const Qwen25VlRopeTables tables =
        vision_rope_tables(grids, vision_window_layout(grids, config), config);
    ASSERT_EQ(tables.cos.shape(), (Shape{4, 8}));
    expect_patch(tables, 1, 0, 1);
    expect_patch(tables, 2, 1, 0);
    expect_patch(tables, 3, 1, 1);
  }
  {
    // Windowed position 4 is merged token 2 (window order 0, 1, 5, 6, 2, ...), whose first
    // patch is at row 0, column 4 and last at row 1, column 5.
    const std::vector<ImageGrid> grids = {{1, 6, 10}};
    const Qwen25VlRopeTables tables =
        vision_rope_tables(grids, vision_window_layout(grids, config), config);
    expect_patch(tables, 16, 0, 4);
    expect_patch(tables, 19, 1, 5);
  }
}

}  // namespace
}  // namespace ethereal
