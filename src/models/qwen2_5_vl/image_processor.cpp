#include "models/qwen2_5_vl/image_processor.h"

#include <fmt/format.h>

#include "models/qwen2_5_vl/config.h"
#include "models/qwen2_5_vl/json_fields.h"
#include "models/qwen2_5_vl/smart_resize.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace ethereal {

using qwen2_5_vl::JsonFields;

namespace {

constexpr int kChannels = 3;

// PIL resampling numbers as transformers stores them in "resample".
ResampleFilter filter_from_pil(std::int64_t value, const JsonFields& fields) {
  switch (value) {
    case 1: return ResampleFilter::kLanczos;
    case 2: return ResampleFilter::kBilinear;
    case 3: return ResampleFilter::kBicubic;
    case 4: return ResampleFilter::kBox;
    default:
      fields.fail("resample", fmt::format("is {}; supported are 1 (Lanczos), 2 (bilinear), "
                                          "3 (bicubic, the Qwen2-VL default) and 4 (box)",
                                          value));
  }
}

std::array<float, 3> read_channel_values(const JsonFields& fields, const std::string& key,
                                         const std::array<float, 3>& fallback) {
  const std::vector<double> values =
      fields.number_list(key, {fallback[0], fallback[1], fallback[2]});
  if (values.size() != kChannels) {
    fields.fail(key,
                fmt::format("must hold {} values (R, G, B), got {}", kChannels, values.size()));
  }
  return {static_cast<float>(values[0]), static_cast<float>(values[1]),
          static_cast<float>(values[2])};
}

void validate(const Qwen2VlImageProcessorConfig& config, const JsonFields& fields) {
  for (const auto& [key, value] :
       {std::pair<const char*, std::int64_t>{"patch_size", config.patch_size},
        {"temporal_patch_size", config.temporal_patch_size},
        {"merge_size", config.merge_size},
        {"min_pixels", config.min_pixels},
        {"max_pixels", config.max_pixels}}) {
    if (value <= 0) {
      fields.fail(key, fmt::format("must be a positive integer, got {}", value));
    }
  }
  if (config.min_pixels > config.max_pixels) {
    fields.fail("min_pixels", fmt::format("({}) must not exceed max_pixels ({})", config.min_pixels,
                                          config.max_pixels));
  }
  for (float value : config.image_std) {
    if (!(value != 0.0f)) {
      fields.fail("image_std", "must not contain 0");
    }
  }
}

// Normalised value of every pixel, channel-first: [3][height][width].
std::vector<float> normalised_planes(const Image& rgb, const Qwen2VlImageProcessorConfig& config) {
  const std::size_t plane = static_cast<std::size_t>(rgb.width()) * rgb.height();
  std::vector<float> planes(kChannels * plane);
  for (int y = 0; y < rgb.height(); ++y) {
    for (int x = 0; x < rgb.width(); ++x) {
      for (int c = 0; c < kChannels; ++c) {
        const std::uint8_t value = rgb.at(x, y, c);
        // numpy processor: rescale in float64 then store float32; normalise in float32.
        float v = config.do_rescale ? static_cast<float>(value * config.rescale_factor)
                                    : static_cast<float>(value);
        if (config.do_normalize) {
          v = (v - config.image_mean[c]) / config.image_std[c];
        }
        planes[c * plane + static_cast<std::size_t>(y) * rgb.width() + x] = v;
      }
    }
  }
  return planes;
}

}  // namespace

Qwen2VlImageProcessorConfig Qwen2VlImageProcessorConfig::from_json(const nlohmann::json& document,
                                                                   const std::string& source) {
  qwen2_5_vl::require_json_object(document, source, "a transformers preprocessor_config.json");
  JsonFields fields(document, source);
  Qwen2VlImageProcessorConfig config;
  // transformers: "size" sets both bounds, "min_pixels" and "max_pixels" override them.
  if (fields.has("size")) {
    const nlohmann::json& size = fields.at("size");
    if (!size.is_object()) {
      fields.fail("size", fmt::format("must be an object, got {}", size.dump()));
    }
    JsonFields size_fields(size, source, "size.");
    config.min_pixels = size_fields.integer("shortest_edge", config.min_pixels);
    config.max_pixels = size_fields.integer("longest_edge", config.max_pixels);
  }
  config.min_pixels = fields.integer("min_pixels", config.min_pixels);
  config.max_pixels = fields.integer("max_pixels", config.max_pixels);
  config.patch_size = fields.integer("patch_size", config.patch_size);
  config.temporal_patch_size = fields.integer("temporal_patch_size", config.temporal_patch_size);
  config.merge_size = fields.integer("merge_size", config.merge_size);
  config.image_mean = read_channel_values(fields, "image_mean", config.image_mean);
  config.image_std = read_channel_values(fields, "image_std", config.image_std);
  config.rescale_factor = fields.number("rescale_factor", config.rescale_factor);
  config.do_resize = fields.boolean("do_resize", config.do_resize);
  config.do_rescale = fields.boolean("do_rescale", config.do_rescale);
  config.do_normalize = fields.boolean("do_normalize", config.do_normalize);
  if (fields.has("resample")) {
    config.resample = filter_from_pil(fields.integer("resample"), fields);
  }
  validate(config, fields);
  return config;
}

Qwen2VlImageProcessorConfig Qwen2VlImageProcessorConfig::from_file(
    const std::filesystem::path& path) {
  return from_json(
      read_qwen25vl_json(path, "the image processor configuration (preprocessor_config.json)"),
      path.string());
}

ImageSize qwen2vl_processed_size(int width, int height, const Qwen2VlImageProcessorConfig& config) {
  if (!config.do_resize) {
    return {width, height};
  }
  return smart_resize(height, width, static_cast<int>(config.factor()), config.min_pixels,
                      config.max_pixels);
}

ProcessedImage process_qwen2vl_image(const Image& image,
                                     const Qwen2VlImageProcessorConfig& config) {
  if (image.empty()) {
    throw InvalidInputError("image processor: the image is empty");
  }
  const Image rgb = image.channels() == kChannels ? image : to_rgb(image);
  const ImageSize size = qwen2vl_processed_size(rgb.width(), rgb.height(), config);
  if (size.width == rgb.width() && size.height == rgb.height()) {
    return qwen2vl_patch_rows(rgb, config);  // Pillow's resize to the same size is a copy
  }
  return qwen2vl_patch_rows(resize(rgb, size.width, size.height, config.resample), config);
}

ProcessedImage qwen2vl_patch_rows(const Image& rgb, const Qwen2VlImageProcessorConfig& config) {
  const std::int64_t factor = config.factor();
  if (rgb.channels() != kChannels || rgb.width() % factor != 0 || rgb.height() % factor != 0 ||
      rgb.empty()) {
    throw InvalidInputError(fmt::format(
        "image processor: a {}x{} image with {} channels cannot be cut into patches; it must be "
        "RGB with sides that are multiples of {} (resize it with smart_resize first)",
        rgb.width(), rgb.height(), rgb.channels(), factor));
  }
  const std::int64_t patch = config.patch_size;
  const std::int64_t merge = config.merge_size;
  const std::int64_t frames = config.temporal_patch_size;
  const ImageGrid grid{1, rgb.height() / patch, rgb.width() / patch};
  const std::int64_t row_values = kChannels * frames * patch * patch;

  ProcessedImage result{Tensor::empty({grid.patches(), row_values}, DType::f32), grid};
  if (result.pixel_rows.is_dry()) {
    return result;
  }
  const std::vector<float> planes = normalised_planes(rgb, config);
  const std::size_t plane = static_cast<std::size_t>(rgb.width()) * rgb.height();
  float* rows = result.pixel_rows.data_as<float>();
  const std::int64_t block_columns = grid.w / merge;
  parallel_for(0, grid.patches(), 16, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t index = begin; index < end; ++index) {
      // index = ((block_row x block_columns + block_column) x merge + r) x merge + c
      const std::int64_t c_in_block = index % merge;
      const std::int64_t r_in_block = (index / merge) % merge;
      const std::int64_t block = index / (merge * merge);
      const std::int64_t top = (block / block_columns * merge + r_in_block) * patch;
      const std::int64_t left = (block % block_columns * merge + c_in_block) * patch;
      float* out = rows + index * row_values;
      for (int channel = 0; channel < kChannels; ++channel) {
        for (std::int64_t frame = 0; frame < frames; ++frame) {  // identical frames
          for (std::int64_t py = 0; py < patch; ++py) {
            const float* source = planes.data() + channel * plane +
                                  static_cast<std::size_t>((top + py) * rgb.width() + left);
            std::copy(source, source + patch, out);
            out += patch;
          }
        }
      }
    }
  });
  return result;
}

}  // namespace ethereal
