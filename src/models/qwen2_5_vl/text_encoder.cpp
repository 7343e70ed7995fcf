#include "models/qwen2_5_vl/text_encoder.h"

#include <vector>

#include "kernels/cpu/concat.h"
#include "models/qwen2_5_vl/tensor_names.h"
#include "models/weight_loader.h"

namespace ethereal {

Qwen25VlTextEncoder::Qwen25VlTextEncoder(Qwen25VlConfig config, ModelPrecision precision,
                                         Qwen25VlOptions options,
                                         Qwen25VlLanguageModel language_model,
                                         Qwen25VlVisionTower vision)
    : config_(std::move(config)),
      precision_(precision),
      options_(options),
      language_model_(std::move(language_model)),
      vision_(std::move(vision)) {}

Qwen25VlTextEncoder Qwen25VlTextEncoder::load(const SafetensorsCheckpoint& checkpoint,
                                              const Qwen25VlConfig& config,
                                              ModelPrecision precision, Qwen25VlOptions options) {
  WeightLoader loader(checkpoint, qwen25vl_tensor_name_map(detect_qwen25vl_layout(checkpoint)),
                      "text encoder");
  Qwen25VlLanguageModel language_model = Qwen25VlLanguageModel::load(loader, config, precision);
  Qwen25VlVisionTower vision = Qwen25VlVisionTower::load(loader, config.vision, precision);
  loader.finish();
  return Qwen25VlTextEncoder(config, precision, options, std::move(language_model),
                             std::move(vision));
}

Qwen25VlTextEncoder Qwen25VlTextEncoder::load(const std::filesystem::path& directory,
                                              ModelPrecision precision, Qwen25VlOptions options) {
  const Qwen25VlConfig config = Qwen25VlConfig::from_file(directory / "config.json");
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(directory);
  return load(checkpoint, config, precision, options);
}

Tensor Qwen25VlTextEncoder::encode_images(const Tensor& pixel_rows,
                                          std::span<const ImageGrid> grids) const {
  return vision_.forward(pixel_rows, grids, options_);
}

Tensor Qwen25VlTextEncoder::forward(std::span<const std::int64_t> input_ids,
                                    const Tensor& image_embeddings,
                                    const Tensor& position_ids) const {
  const Tensor inputs_embeds = language_model_.embed(input_ids, image_embeddings);  // [S, hidden]
  return language_model_.forward(inputs_embeds, position_ids, options_);
}

Tensor Qwen25VlTextEncoder::encode_prompt(std::span<const std::int64_t> input_ids,
                                          std::span<const ProcessedImage> images) const {
  std::vector<ImageGrid> grids;
  std::vector<Tensor> rows;
  for (const ProcessedImage& image : images) {
    grids.push_back(image.grid);
    rows.push_back(image.pixel_rows);
  }
  // Checked before the vision tower runs, so a prompt that does not match fails early.
  const Tensor position_ids = mrope_position_ids(input_ids, grids, config_);  // [3, S]
  Tensor image_embeddings;
  if (!images.empty()) {
    const Tensor pixel_rows = rows.size() == 1 ? rows.front() : cpu::concat(rows, 0);
    image_embeddings = encode_images(pixel_rows, grids);  // [N_image_tokens, hidden]
  }
  return forward(input_ids, image_embeddings, position_ids);
}

}  // namespace ethereal
