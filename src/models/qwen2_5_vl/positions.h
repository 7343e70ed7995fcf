// Position bookkeeping of Qwen2.5-VL: the 3-D M-RoPE position ids of a prompt with images, the
// rotary tables of the language model and the vision tower, and the window order of the
// vision tower.
//
// Everything here is computed from shapes and token ids, never from tensor values, so it runs
// the same in a dry run. Rotary tables are f32 [S, head_dim / 2] for the rotate-half kernel
// (cpu::apply_rope_ with RopeStyle::rotate_half): entry (s, j) is the angle of the pair
// (j, j + head_dim / 2) of token s. They are allocated with Tensor::empty and filled only when
// real.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "models/qwen2_5_vl/config.h"
#include "runtime/tensor.h"

namespace ethereal {

// The patch grid of one image: frames (temporal patches), rows and columns of 14 x 14 patches.
// The processor emits t = 1 for a still image.
struct ImageGrid {
  std::int64_t t = 1;
  std::int64_t h = 0;
  std::int64_t w = 0;

  std::int64_t patches() const { return t * h * w; }
  friend bool operator==(const ImageGrid&, const ImageGrid&) = default;
};

// Language-model tokens of one image: t x (h / merge) x (w / merge).
std::int64_t merged_token_count(const ImageGrid& grid, std::int64_t spatial_merge_size);

// transformers' get_rope_index for one unpadded sequence of text and still images. Returns
// int64 [3, S] (rows t, h, w), always backed by memory (also in a dry run), because it is
// computed from token ids.
//
// Text tokens get t = h = w = their running index. The k-th image is the run of
// image_token_id tokens that starts at the first image token after the previous image; it
// must be preceded by vision_start_token_id and be exactly merged_token_count(grids[k]) long.
// Its token at frame f, merged row r, merged column c gets (s, s + r, s + c), where s is the
// index the next text token would have had (the t offset is 0: still images have no time
// step). The token after an image continues at the largest id so far plus 1. Throws
// InvalidInputError when the spans and the grids do not match, or for video tokens.
Tensor mrope_position_ids(std::span<const std::int64_t> input_ids, std::span<const ImageGrid> grids,
                          const Qwen25VlConfig& config);

struct Qwen25VlRopeTables {
  Tensor cos;  // f32 [S, head_dim / 2]
  Tensor sin;
};

// Language-model tables for position_ids int64 [3, S]: angle (s, j) = position(axis(j), s) x
// theta^(-2j / head_dim), where axis(j) is t for the first mrope_section[0] frequencies, h for
// the next mrope_section[1] and w for the rest. With `round_to_bf16` the cos and sin values
// are rounded to bf16, as transformers does for a bf16 model before rotating.
Qwen25VlRopeTables text_rope_tables(const Tensor& position_ids, const Qwen25VlTextConfig& config,
                                    bool round_to_bf16);

// Window attention layout of the vision tower for a list of images (transformers'
// get_window_index). Per image frame, the merged grid (h / merge, w / merge) is padded at the
// bottom and right by `window - n % window` entries per axis (a whole empty window when n is
// already a multiple), cut into windows of `window` x `window` merged tokens enumerated
// row-major, each read row-major, and the padding dropped.
struct VisionWindowLayout {
  // Merged-token order: position i of the windowed sequence holds merged token
  // window_index[i] (numbered over all images in processor order).
  std::vector<std::int64_t> window_index;
  // Patch offsets where windows start, plus the total at the end, repeats of empty windows
  // removed (transformers' cu_window_seqlens after unique_consecutive).
  std::vector<std::int64_t> cu_window_seqlens;
  // Patch offsets where image frames start, plus the total (transformers' cu_seqlens).
  std::vector<std::int64_t> cu_seqlens;

  std::int64_t patch_count() const { return cu_seqlens.back(); }
};

// Throws InvalidInputError when a grid is empty or its sides are not multiples of the merge
// size.
VisionWindowLayout vision_window_layout(std::span<const ImageGrid> grids,
                                        const Qwen25VlVisionConfig& config);

// Vision tables in windowed order: for each patch at (row, col) of its image,
// [row x f_0 .. row x f_{q-1} | col x f_0 .. col x f_{q-1}] with q = head_dim / 4 and
// f_j = 10000^(-2j / (head_dim / 2)). Patches are numbered in processor order (merge groups of
// 2 x 2 patches row-major, each group row-major), then permuted by the window index.
Qwen25VlRopeTables vision_rope_tables(std::span<const ImageGrid> grids,
                                      const VisionWindowLayout& layout,
                                      const Qwen25VlVisionConfig& config);

}  // namespace ethereal
