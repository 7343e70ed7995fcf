// The Qwen2.5-VL text encoder of the Edit-Plus pipeline: vision tower and language model
// loaded together from one checkpoint, returning the last hidden state of a prompt that
// contains images.
//
// Call sequence for one prompt (what encode_prompt does):
//   rows   = process_qwen2vl_image(image) for each image      (image_processor.h)
//   embeds = encode_images(concatenated rows, grids)           [N_image_tokens, hidden]
//   ids3d  = mrope_position_ids(input_ids, grids, config)      int64 [3, S]
//   hidden = forward(input_ids, embeds, ids3d)                  [S, hidden], after the final norm
// The pipeline then drops the system-prompt tokens, which this class does not do.
//
// Loading accepts the older ("model.layers.*", "visual.*") and newer
// ("model.language_model.*", "model.visual.*") tensor names, detected from the checkpoint,
// and skips lm_head. Every other tensor of the checkpoint must belong to the model.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>

#include "io/safetensors_checkpoint.h"
#include "models/model_precision.h"
#include "models/qwen2_5_vl/config.h"
#include "models/qwen2_5_vl/image_processor.h"
#include "models/qwen2_5_vl/language_model.h"
#include "models/qwen2_5_vl/layers.h"
#include "models/qwen2_5_vl/positions.h"
#include "models/qwen2_5_vl/vision_tower.h"
#include "runtime/tensor.h"

namespace ethereal {

class Qwen25VlTextEncoder {
 public:
  static Qwen25VlTextEncoder load(const SafetensorsCheckpoint& checkpoint,
                                  const Qwen25VlConfig& config, ModelPrecision precision,
                                  Qwen25VlOptions options = {});
  // Reads `directory`/config.json and the directory's safetensors checkpoint (one file, or
  // shards with an index).
  static Qwen25VlTextEncoder load(const std::filesystem::path& directory, ModelPrecision precision,
                                  Qwen25VlOptions options = {});

  // Vision features of the images whose processor rows are concatenated in `pixel_rows`
  // [N_patches, patch_values()]: [N_patches / merge_unit, hidden] in the compute dtype.
  Tensor encode_images(const Tensor& pixel_rows, std::span<const ImageGrid> grids) const;

  // Last hidden state [S, hidden] (after the final RMSNorm) of `input_ids`, whose image tokens
  // take the rows of `image_embeddings` (undefined when there are none) and whose positions
  // are `position_ids` int64 [3, S].
  Tensor forward(std::span<const std::int64_t> input_ids, const Tensor& image_embeddings,
                 const Tensor& position_ids) const;

  // The whole sequence above for a prompt and its processed images (in prompt order).
  Tensor encode_prompt(std::span<const std::int64_t> input_ids,
                       std::span<const ProcessedImage> images) const;

  const Qwen25VlConfig& config() const { return config_; }
  ModelPrecision precision() const { return precision_; }
  const Qwen25VlOptions& options() const { return options_; }
  void set_options(const Qwen25VlOptions& options) { options_ = options; }

 private:
  Qwen25VlTextEncoder(Qwen25VlConfig config, ModelPrecision precision, Qwen25VlOptions options,
                      Qwen25VlLanguageModel language_model, Qwen25VlVisionTower vision);

  Qwen25VlConfig config_;
  ModelPrecision precision_;
  Qwen25VlOptions options_;
  Qwen25VlLanguageModel language_model_;
  Qwen25VlVisionTower vision_;
};

}  // namespace ethereal
