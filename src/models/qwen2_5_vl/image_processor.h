// The Qwen2-VL image processor (transformers Qwen2VLImageProcessor, the numpy "slow" one): an
// 8-bit RGB image to the patch rows the vision tower reads.
//
// Steps: convert to RGB; resize to the smart_resize size (sides multiples of patch x merge =
// 28, pixel count within [min_pixels, max_pixels]) with Pillow's 8-bit bicubic filter; rescale
// by 1/255 in double and round to f32; normalise per channel as (v - mean) / std in f32; repeat
// the still image to temporal_patch_size frames; cut into patches. Rows are ordered (frame
// group, merged row block, merged column block, row in block, column in block), so every
// merge x merge consecutive rows form one language-model token, and each row holds its
// values ordered (channel, frame, y, x): 3 x 2 x 14 x 14 = 1176 for the default settings.
//
// Settings come from preprocessor_config.json when one is given. The defaults are those of
// Qwen-Image's processor (CLIP mean and std, 56 x 56 to 12,845,056 pixels). transformers' fast
// (torchvision) processor folds rescale and normalise into one step and can differ in the last
// bit, so this one follows the numpy processor.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "io/image.h"
#include "io/resample.h"
#include "models/qwen2_5_vl/positions.h"
#include "models/qwen2_5_vl/smart_resize.h"
#include "runtime/tensor.h"

namespace ethereal {

struct Qwen2VlImageProcessorConfig {
  std::int64_t min_pixels = 56 * 56;
  std::int64_t max_pixels = 12845056;
  std::int64_t patch_size = 14;
  std::int64_t temporal_patch_size = 2;
  std::int64_t merge_size = 2;
  std::array<float, 3> image_mean = {0.48145466f, 0.4578275f, 0.40821073f};
  std::array<float, 3> image_std = {0.26862954f, 0.26130258f, 0.27577711f};
  double rescale_factor = 1.0 / 255.0;
  bool do_resize = true;
  bool do_rescale = true;
  bool do_normalize = true;
  ResampleFilter resample = ResampleFilter::kBicubic;

  // Reads preprocessor_config.json ("min_pixels"/"max_pixels", or "size" with
  // "shortest_edge"/"longest_edge" as newer transformers write them). Unknown keys are ignored;
  // invalid values are InvalidInputError naming `source` and the key.
  static Qwen2VlImageProcessorConfig from_json(const nlohmann::json& document,
                                               const std::string& source);
  static Qwen2VlImageProcessorConfig from_file(const std::filesystem::path& path);

  // Side multiple of resized images: patch_size x merge_size.
  std::int64_t factor() const { return patch_size * merge_size; }
};

struct ProcessedImage {
  Tensor pixel_rows;  // f32 [grid.patches(), 3 x temporal_patch_size x patch_size^2]
  ImageGrid grid;     // (1, height / patch_size, width / patch_size)
};

// The size the processor resizes an image of width x height to (smart_resize), or the image's
// own size when do_resize is false.
ImageSize qwen2vl_processed_size(int width, int height, const Qwen2VlImageProcessorConfig& config);

// Processes one image (1, 3 or 4 channels; gray is replicated, alpha dropped). The rows are
// allocated with Tensor::empty and filled only when real. Throws InvalidInputError for an
// empty image, a side shorter than the factor, or (with do_resize false) sides that are not
// multiples of it.
ProcessedImage process_qwen2vl_image(const Image& image, const Qwen2VlImageProcessorConfig& config);

// The patch rows of an RGB image whose sides are already multiples of the factor, without
// resizing.
ProcessedImage qwen2vl_patch_rows(const Image& rgb, const Qwen2VlImageProcessorConfig& config);

}  // namespace ethereal
