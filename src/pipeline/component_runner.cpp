#include "pipeline/component_runner.h"

#include <fmt/format.h>

#include "io/model_directory.h"
#include "io/safetensors_checkpoint.h"
#include "io/safetensors_writer.h"
#include "models/qwen2_5_vl/config.h"
#include "models/qwen2_5_vl/language_model.h"
#include "models/qwen2_5_vl/positions.h"
#include "models/qwen2_5_vl/tensor_names.h"
#include "models/qwen2_5_vl/vision_tower.h"
#include "models/qwen_image/transformer.h"
#include "models/qwen_image/transformer_tensor_names.h"
#include "models/qwen_image/vae.h"
#include "models/weight_loader.h"
#include "runtime/error.h"

namespace ethereal {

namespace {

using Outputs = std::vector<std::pair<std::string, Tensor>>;

// Input tensors of one file, looked up as "name" or "input.name".
class Inputs {
 public:
  explicit Inputs(const std::filesystem::path& path)
      : path_(path), file_(SafetensorsCheckpoint::open(path)) {}

  bool has(const std::string& name) const {
    return file_.contains(name) || file_.contains("input." + name);
  }

  // The tensor `name`, with a leading batch axis of 1 removed when `rank` asks for one
  // fewer axis.
  Tensor raw(const std::string& name) const {
    if (!has(name)) {
      throw InvalidInputError(
          fmt::format("{}: input tensor \"{}\" is missing (see "
                      "docs/run-component.md for the names)",
                      path_.string(), name));
    }
    return file_.tensor(file_.contains(name) ? name : "input." + name);
  }

  Tensor get(const std::string& name, std::int64_t rank) const {
    Tensor tensor = raw(name);
    while (tensor.dim() > rank && tensor.size(0) == 1) {
      tensor = tensor.select(0, 0);
    }
    if (tensor.dim() != rank) {
      throw InvalidInputError(fmt::format("{}: input tensor \"{}\" is {}; expected {} axes",
                                          path_.string(), name, tensor.describe(), rank));
    }
    return tensor.contiguous();
  }

  // An image-like tensor as [1, C, H, W]: a diffusers frame axis [1, C, 1, H, W] is dropped
  // and a missing batch axis added.
  Tensor image(const std::string& name) const {
    Tensor tensor = raw(name);
    if (tensor.dim() == 5 && tensor.size(2) == 1) {
      tensor = tensor.select(2, 0);
    }
    if (tensor.dim() == 3) {
      tensor = tensor.unsqueeze(0);
    }
    if (tensor.dim() != 4 || tensor.size(0) != 1) {
      throw InvalidInputError(fmt::format("{}: input tensor \"{}\" is {}; expected [1, C, H, W]",
                                          path_.string(), name, tensor.describe()));
    }
    return tensor.contiguous();
  }

  std::vector<std::int64_t> integers(const std::string& name) const {
    const Tensor tensor = raw(name).to(DType::int64).contiguous();
    const std::int64_t* data = tensor.data_as<std::int64_t>();
    return std::vector<std::int64_t>(data, data + tensor.numel());
  }

  double scalar(const std::string& name) const {
    const Tensor tensor = raw(name);
    if (tensor.numel() != 1) {
      throw InvalidInputError(fmt::format("{}: input tensor \"{}\" must hold one value, not {}",
                                          path_.string(), name, tensor.describe()));
    }
    return tensor.to_floats()[0];
  }

 private:
  std::filesystem::path path_;
  SafetensorsCheckpoint file_;
};

Outputs run_transformer(const ModelDirectory& model, const Inputs& inputs,
                        ModelPrecision precision) {
  const SafetensorsCheckpoint checkpoint = model.open_weights(ModelComponent::transformer);
  QwenImageTransformerConfig config =
      QwenImageTransformerConfig::from_file(*model.config_path(ModelComponent::transformer));
  config.zero_cond_t = config.zero_cond_t || checkpoint_sets_zero_cond_t(checkpoint);
  const QwenImageTransformer transformer =
      QwenImageTransformer::load(checkpoint, config, precision, comfy_transformer_tensor_name);

  TransformerInputs call;
  call.hidden_states = inputs.get("hidden_states", 2).to(precision.compute_dtype);
  call.encoder_hidden_states = inputs.get("encoder_hidden_states", 2).to(precision.compute_dtype);
  if (inputs.has("encoder_hidden_states_mask")) {
    call.text_mask = inputs.get("encoder_hidden_states_mask", 1);
  }
  call.sigma = inputs.scalar("timestep");
  const std::vector<std::int64_t> shapes = inputs.integers("img_shapes");
  for (std::size_t i = 0; i + 3 <= shapes.size(); i += 3) {
    call.img_shapes.push_back({shapes[i], shapes[i + 1], shapes[i + 2]});
  }
  return {{"sample", transformer.forward(call).to(DType::f32).unsqueeze(0)}};
}

Outputs run_vae(const ModelDirectory& model, const Inputs& inputs, ModelPrecision precision,
                bool encode) {
  const QwenImageVae vae = QwenImageVae::load_directory(model.folder(ModelComponent::vae),
                                                        precision, VaeParts{encode, !encode});
  if (encode) {
    const Tensor mean = vae.encode(inputs.image("image").to(precision.compute_dtype));
    return {{"mean", mean.to(DType::f32)}, {"latents", vae.normalize_latents(mean).to(DType::f32)}};
  }
  const Tensor latents = inputs.has("latents")
                             ? inputs.image("latents")
                             : vae.denormalize_latents(inputs.image("normalized_latents"));
  return {{"image", vae.decode(latents.to(precision.compute_dtype)).to(DType::f32)}};
}

Outputs run_text_encoder(const ModelDirectory& model, const Inputs& inputs,
                         ModelPrecision precision, bool vision_only) {
  const Qwen25VlConfig config =
      Qwen25VlConfig::from_file(*model.config_path(ModelComponent::text_encoder));
  const SafetensorsCheckpoint checkpoint = model.open_weights(ModelComponent::text_encoder);
  WeightLoader loader(checkpoint, qwen25vl_tensor_name_map(detect_qwen25vl_layout(checkpoint)),
                      "text encoder");

  std::vector<ImageGrid> grids;
  if (inputs.has("image_grid_thw")) {
    const std::vector<std::int64_t> thw = inputs.integers("image_grid_thw");
    for (std::size_t i = 0; i + 3 <= thw.size(); i += 3) {
      grids.push_back({thw[i], thw[i + 1], thw[i + 2]});
    }
  }
  if (vision_only) {
    const Qwen25VlVisionTower vision = Qwen25VlVisionTower::load(loader, config.vision, precision);
    loader.ignore_prefix("model.");
    const Tensor pixels = inputs.get("pixel_values", 2).to(precision.compute_dtype);
    return {{"image_embeds", vision.forward(pixels, grids).to(DType::f32)}};
  }

  const Qwen25VlLanguageModel language_model =
      Qwen25VlLanguageModel::load(loader, config, precision);
  const Tensor ids_tensor = inputs.get("input_ids", 1).to(DType::int64);
  const std::int64_t* data = ids_tensor.data_as<std::int64_t>();
  const std::vector<std::int64_t> ids(data, data + ids_tensor.numel());
  const Tensor image_embeds = inputs.has("image_embeds")
                                  ? inputs.get("image_embeds", 2).to(precision.compute_dtype)
                                  : Tensor();
  const Tensor positions = mrope_position_ids(ids, grids, config);
  const Tensor hidden = language_model.forward(language_model.embed(ids, image_embeds), positions);
  return {{"last_hidden_state", hidden.to(DType::f32).unsqueeze(0)}, {"position_ids", positions}};
}

}  // namespace

const std::vector<std::string>& runnable_components() {
  static const std::vector<std::string> names = {"transformer", "vae_encode", "vae_decode",
                                                 "vision", "text_encoder"};
  return names;
}

void run_component(const std::filesystem::path& model_directory, std::string_view component,
                   const std::filesystem::path& input, const std::filesystem::path& output,
                   ModelPrecision precision) {
  const ModelDirectory model = ModelDirectory::open(model_directory);
  const Inputs inputs(input);
  Outputs outputs;
  if (component == "transformer") {
    outputs = run_transformer(model, inputs, precision);
  } else if (component == "vae_encode" || component == "vae_decode") {
    outputs = run_vae(model, inputs, precision, component == "vae_encode");
  } else if (component == "vision" || component == "text_encoder") {
    outputs = run_text_encoder(model, inputs, precision, component == "vision");
  } else {
    throw InvalidInputError(fmt::format(
        "unknown component \"{}\"; expected one of transformer, vae_encode, vae_decode, vision, "
        "text_encoder",
        component));
  }
  write_safetensors(output, outputs,
                    {{"component", std::string(component)}, {"input", input.string()}});
}

}  // namespace ethereal
