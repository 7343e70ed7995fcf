#include "quant/stored_weight.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "quant/quantize.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace ethereal::quant {

namespace {

constexpr std::string_view kWeightSuffix = ".weight";
constexpr std::string_view kComfyFloat8Format = "float8_e4m3fn";

constexpr std::array<std::string_view, 9> kAuxiliarySuffixes = {
    kScaleWeightSuffix,    kWeightScaleSuffix,  kComfyQuantSuffix,
    kInputScaleSuffix,     kScaleInputSuffix,   kNf4AbsmaxSuffix,
    kNf4AbsmaxScaleSuffix, kNf4AbsmaxMapSuffix, kNf4AbsmaxOffsetSuffix};

// The tensors found under "<module>.", by suffix, and the file they are in (for messages).
class LayoutTensors {
 public:
  LayoutTensors(const SafetensorsCheckpoint& checkpoint, std::string_view weight_tensor)
      : checkpoint_(checkpoint),
        weight_tensor_(weight_tensor),
        module_(weight_tensor.substr(0, weight_tensor.size() - kWeightSuffix.size())) {
    const std::string prefix = module_ + ".";
    for (const std::string& name : checkpoint.names()) {
      if (!name.starts_with(prefix)) {
        continue;
      }
      const std::string_view suffix = std::string_view(name).substr(prefix.size());
      if (suffix == "weight" || suffix == "bias") {
        continue;
      }
      if (std::find(kAuxiliarySuffixes.begin(), kAuxiliarySuffixes.end(), suffix) ==
          kAuxiliarySuffixes.end()) {
        throw InvalidInputError(fmt::format(
            "{}: tensor \"{}\" belongs to the linear layer \"{}\" but is not part of a weight "
            "layout this engine reads (plain float, fp8 e4m3 with scale_weight, weight_scale or "
            "comfy_quant, int8 with weight_scale, or this engine's nf4); convert the checkpoint "
            "to one of these, for example with `ethereal quantize` from a bf16 copy",
            file_path(name), name, module_));
      }
      found_.emplace(std::string(suffix), name);
    }
  }

  bool has(std::string_view suffix) const { return found_.count(std::string(suffix)) != 0; }
  const std::string& name(std::string_view suffix) const { return found_.at(std::string(suffix)); }
  const TensorInfo& info(std::string_view suffix) const { return checkpoint_.info(name(suffix)); }
  std::vector<std::string> names() const {
    std::vector<std::string> result;
    for (const auto& [suffix, name] : found_) {
      result.push_back(name);
    }
    return result;
  }

  std::string file_path(std::string_view name) const {
    return checkpoint_.file_of(name).path().string();
  }
  const std::string& weight_tensor() const { return weight_tensor_; }
  const std::string& module() const { return module_; }

  // Throws naming `suffix`'s tensor; `problem` describes what is wrong with it.
  [[noreturn]] void reject(std::string_view suffix, std::string_view problem) const {
    const std::string& tensor = name(suffix);
    throw InvalidInputError(
        fmt::format("{}: tensor \"{}\" {}", file_path(tensor), tensor, problem));
  }
  [[noreturn]] void reject_weight(std::string_view problem) const {
    throw InvalidInputError(fmt::format("{}: linear weight \"{}\" {}", file_path(weight_tensor_),
                                        weight_tensor_, problem));
  }

 private:
  const SafetensorsCheckpoint& checkpoint_;
  std::string weight_tensor_;
  std::string module_;
  std::map<std::string, std::string> found_;  // suffix -> tensor name
};

bool is_float_scale_dtype(const TensorInfo& info) {
  return info.dtype == DType::f32 || info.dtype == DType::bf16 || info.dtype == DType::f16;
}

bool is_single_value(const Shape& shape) {
  return shape_numel(shape) == 1 && shape.size() <= 2;
}

bool is_per_channel(const Shape& shape, std::int64_t out_features) {
  return shape == Shape{out_features} || shape == Shape{out_features, 1};
}

// Checks the scale tensor `suffix` and records it: one value, or one per output channel when
// `allow_per_channel`.
void take_scale(const LayoutTensors& tensors, std::string_view suffix, bool allow_per_channel,
                StoredWeight& stored) {
  const TensorInfo& info = tensors.info(suffix);
  if (!is_float_scale_dtype(info)) {
    tensors.reject(suffix, fmt::format("has dtype {}; a weight scale must be F32, BF16 or F16",
                                       info.stored_dtype));
  }
  if (is_single_value(info.shape)) {
    stored.scale_granularity = ScaleGranularity::per_tensor;
  } else if (allow_per_channel && is_per_channel(info.shape, stored.out_features)) {
    stored.scale_granularity = ScaleGranularity::per_channel;
  } else {
    tensors.reject(
        suffix,
        fmt::format(
            "has shape {}; expected one value ([] or [1]){} for a weight of shape [{}, {}]",
            shape_str(info.shape),
            allow_per_channel
                ? fmt::format(" or one per output channel ([{0}] or [{0}, 1])", stored.out_features)
                : std::string(),
            stored.out_features, stored.in_features));
  }
  stored.scale_tensor = tensors.name(suffix);
}

// The one scale of fp8 or int8: weight_scale or scale_weight, not both.
void take_quantized_scale(const LayoutTensors& tensors, StoredWeight& stored) {
  const bool weight_scale = tensors.has(kWeightScaleSuffix);
  const bool scale_weight = tensors.has(kScaleWeightSuffix);
  if (weight_scale && scale_weight) {
    tensors.reject(kWeightScaleSuffix,
                   fmt::format("and \"{}\" both scale the same weight; keep one of them",
                               tensors.name(kScaleWeightSuffix)));
  }
  if (weight_scale || scale_weight) {
    take_scale(tensors, weight_scale ? kWeightScaleSuffix : kScaleWeightSuffix,
               /*allow_per_channel=*/true, stored);
  }
}

// The JSON object stored as uint8 bytes in "<module>.comfy_quant".
nlohmann::json read_comfy_quant(const SafetensorsCheckpoint& checkpoint,
                                const LayoutTensors& tensors) {
  const TensorInfo& info = tensors.info(kComfyQuantSuffix);
  if ((info.dtype != DType::uint8 && info.dtype != DType::int8) || info.shape.size() != 1) {
    tensors.reject(kComfyQuantSuffix,
                   fmt::format("is {}{}; expected a 1-D U8 tensor holding JSON text",
                               info.stored_dtype, shape_str(info.shape)));
  }
  // A few bytes of metadata: read straight from the mapping, also in a dry run.
  const auto* bytes = reinterpret_cast<const char*>(
      checkpoint.file_of(tensors.name(kComfyQuantSuffix)).mapping().data() + info.data_begin);
  nlohmann::json document = nlohmann::json::parse(bytes, bytes + info.nbytes(), /*cb=*/nullptr,
                                                  /*allow_exceptions=*/false);
  if (!document.is_object()) {
    tensors.reject(kComfyQuantSuffix,
                   "is not a JSON object such as {\"format\": \"float8_e4m3fn\"}");
  }
  return document;
}

// Accepts {"format": "float8_e4m3fn"} with an optional boolean "full_precision_matrix_mult".
// That key makes ComfyUI multiply in bf16, as this engine always does.
void check_comfy_quant(const SafetensorsCheckpoint& checkpoint, const LayoutTensors& tensors,
                       DType weight_dtype) {
  const nlohmann::json document = read_comfy_quant(checkpoint, tensors);
  for (const auto& [key, value] : document.items()) {
    if (key != "format" && !(key == "full_precision_matrix_mult" && value.is_boolean())) {
      tensors.reject(kComfyQuantSuffix,
                     fmt::format("has the key \"{}\" ({}), which this engine does not know; only "
                                 "\"format\" and \"full_precision_matrix_mult\" are read",
                                 key, value.dump()));
    }
  }
  const auto format = document.find("format");
  if (format == document.end() || !format->is_string()) {
    tensors.reject(kComfyQuantSuffix, fmt::format("has no \"format\" string: {}", document.dump()));
  }
  const std::string name = format->get<std::string>();
  if (name != kComfyFloat8Format) {
    tensors.reject(kComfyQuantSuffix,
                   fmt::format("names the format \"{}\"; this engine reads only \"{}\"; convert "
                               "the checkpoint to fp8 e4m3, int8 or nf4 with `ethereal quantize` "
                               "from a bf16 copy",
                               name, kComfyFloat8Format));
  }
  if (weight_dtype != DType::fp8_e4m3) {
    tensors.reject_weight(fmt::format("has dtype {}, but \"{}\" says {}", dtype_name(weight_dtype),
                                      tensors.name(kComfyQuantSuffix), name));
  }
}

void reject_present(const LayoutTensors& tensors, std::string_view suffix, std::string_view why) {
  if (tensors.has(suffix)) {
    tensors.reject(suffix, why);
  }
}

void reject_nf4_fields(const LayoutTensors& tensors, DType weight_dtype) {
  for (std::string_view suffix :
       {kNf4AbsmaxSuffix, kNf4AbsmaxScaleSuffix, kNf4AbsmaxMapSuffix, kNf4AbsmaxOffsetSuffix}) {
    reject_present(tensors, suffix,
                   fmt::format("is an nf4 field, but the weight has dtype {}; nf4 weights are U8",
                               dtype_name(weight_dtype)));
  }
}

void require_matrix(const LayoutTensors& tensors, const TensorInfo& weight) {
  if (weight.shape.size() != 2) {
    tensors.reject_weight(fmt::format("is a {} tensor of shape {}; a quantised weight must be 2-D",
                                      weight.stored_dtype, shape_str(weight.shape)));
  }
}

// The nf4 fields: U8 codes, F32 group scales, F32 [256] map and one F32 offset.
void take_nf4_fields(const LayoutTensors& tensors, StoredWeight& stored) {
  const std::int64_t blocks =
      (stored.out_features * stored.in_features + kNf4BlockSize - 1) / kNf4BlockSize;
  const std::int64_t groups = (blocks + kNf4AbsmaxGroupSize - 1) / kNf4AbsmaxGroupSize;
  const auto require = [&](std::string_view suffix, DType dtype, const Shape& shape,
                           bool single_value) -> std::string {
    if (!tensors.has(suffix)) {
      tensors.reject_weight(
          fmt::format("is stored as nf4 but \"{}.{}\" is missing; the file is "
                      "truncated or was written by another tool",
                      tensors.module(), suffix));
    }
    const TensorInfo& info = tensors.info(suffix);
    const bool shape_ok = single_value ? is_single_value(info.shape) : info.shape == shape;
    if (info.dtype != dtype || !shape_ok) {
      tensors.reject(suffix,
                     fmt::format("is {}{}; expected {}{} for an nf4 weight [{}, {}]",
                                 info.stored_dtype, shape_str(info.shape), dtype_name(dtype),
                                 shape_str(shape), stored.out_features, stored.in_features));
    }
    return tensors.name(suffix);
  };
  stored.nf4_absmax_tensor = require(kNf4AbsmaxSuffix, DType::uint8, {blocks}, false);
  stored.nf4_absmax_scale_tensor = require(kNf4AbsmaxScaleSuffix, DType::f32, {groups}, false);
  stored.nf4_absmax_map_tensor = require(kNf4AbsmaxMapSuffix, DType::f32, {256}, false);
  stored.nf4_absmax_offset_tensor = require(kNf4AbsmaxOffsetSuffix, DType::f32, {1}, true);
}

void inspect_float(const LayoutTensors& tensors, StoredWeight& stored) {
  reject_nf4_fields(tensors, stored.weight_dtype);
  reject_present(tensors, kComfyQuantSuffix,
                 fmt::format("marks a quantised layer, but \"{}\" has the float dtype {}",
                             tensors.weight_tensor(), dtype_name(stored.weight_dtype)));
  reject_present(tensors, kWeightScaleSuffix,
                 fmt::format("scales \"{}\", which has the float dtype {}; only fp8 and int8 "
                             "weights take a weight_scale",
                             tensors.weight_tensor(), dtype_name(stored.weight_dtype)));
  if (tensors.has(kScaleWeightSuffix)) {
    take_scale(tensors, kScaleWeightSuffix, /*allow_per_channel=*/false, stored);
  }
}

void inspect_fp8(const SafetensorsCheckpoint& checkpoint, const LayoutTensors& tensors,
                 StoredWeight& stored) {
  reject_nf4_fields(tensors, stored.weight_dtype);
  if (tensors.has(kComfyQuantSuffix)) {
    check_comfy_quant(checkpoint, tensors, stored.weight_dtype);
  }
  take_quantized_scale(tensors, stored);
}

void inspect_int8(const SafetensorsCheckpoint& checkpoint, const LayoutTensors& tensors,
                  StoredWeight& stored) {
  reject_nf4_fields(tensors, stored.weight_dtype);
  if (tensors.has(kComfyQuantSuffix)) {
    check_comfy_quant(checkpoint, tensors, stored.weight_dtype);
  }
  take_quantized_scale(tensors, stored);
  if (stored.scale_tensor.empty()) {
    tensors.reject_weight(
        "is int8 without a weight_scale; an int8 weight needs its scales (f32, one per output "
        "channel)");
  }
}

void inspect_nf4(const LayoutTensors& tensors, StoredWeight& stored) {
  reject_present(tensors, kComfyQuantSuffix, "marks a ComfyUI format, but the weight is nf4");
  reject_present(tensors, kWeightScaleSuffix, "scales a weight stored as nf4, which has none");
  reject_present(tensors, kScaleWeightSuffix, "scales a weight stored as nf4, which has none");
  take_nf4_fields(tensors, stored);
}

// Reads one float of a single-value tensor.
float read_single_value(const SafetensorsCheckpoint& checkpoint, const std::string& name) {
  return checkpoint.tensor(name).to_floats().at(0);
}

// f32 scales [1] or [out] (int8 repeats a per-tensor scale for every channel).
Tensor read_scales(const SafetensorsCheckpoint& checkpoint, const StoredWeight& stored) {
  const bool repeat = stored.encoding == StoredEncoding::int8 &&
                      stored.scale_granularity == ScaleGranularity::per_tensor;
  const bool per_channel = stored.scale_granularity == ScaleGranularity::per_channel || repeat;
  Tensor scales = Tensor::empty({per_channel ? stored.out_features : 1}, DType::f32);
  if (scales.is_dry()) {
    return scales;
  }
  float* data = scales.data_as<float>();
  if (stored.scale_tensor.empty()) {
    data[0] = 1.0f;  // a plain fp8 cast
  } else if (repeat) {
    std::fill(data, data + stored.out_features, read_single_value(checkpoint, stored.scale_tensor));
  } else {
    const Tensor file_scales = checkpoint.tensor(stored.scale_tensor);
    scales.copy_from(file_scales.reshape({scales.numel()}));
  }
  return scales;
}

// A view with the engine dtype `dtype` over the bytes of the file tensor `name`.
Tensor file_view(const SafetensorsCheckpoint& checkpoint, const std::string& name,
                 const Shape& shape, DType dtype) {
  const Tensor stored = checkpoint.tensor(name);
  return Tensor::from_blob(stored.data(), shape, dtype, stored.storage());
}

// Copies the bytes of the file tensor `name` into `destination` (same byte size).
void copy_bytes(const SafetensorsCheckpoint& checkpoint, const std::string& name,
                const Tensor& destination) {
  if (destination.is_dry()) {
    return;
  }
  const Tensor stored = checkpoint.tensor(name);
  std::memcpy(destination.data(), stored.data(), destination.nbytes());
}

QuantizedWeight empty_weight(const StoredWeight& stored) {
  if (!stored.is_quantized()) {
    throw Error(fmt::format("{} is a float weight; it has no quantised form to read",
                            stored.weight_tensor));
  }
  QuantizedWeight weight;
  weight.format = *stored.format();
  weight.out_features = stored.out_features;
  weight.in_features = stored.in_features;
  return weight;
}

DType values_dtype(QuantFormat format) {
  switch (format) {
    case QuantFormat::fp8_e4m3: return DType::fp8_e4m3;
    case QuantFormat::int8: return DType::int8;
    case QuantFormat::nf4: return DType::packed4;
  }
  return DType::uint8;
}

// The small nf4 tensors, copied; `absmax_codes` is filled by the caller.
void read_nf4_scales(const SafetensorsCheckpoint& checkpoint, const StoredWeight& stored,
                     QuantizedWeight& weight) {
  const std::int64_t blocks = weight.nf4_block_count();
  const std::int64_t groups = (blocks + kNf4AbsmaxGroupSize - 1) / kNf4AbsmaxGroupSize;
  weight.nf4.group_scales = Tensor::empty({groups}, DType::f32);
  weight.nf4.code_map = Tensor::empty({256}, DType::f32);
  if (dry_run_active()) {
    return;
  }
  weight.nf4.group_scales.copy_from(checkpoint.tensor(stored.nf4_absmax_scale_tensor));
  weight.nf4.code_map.copy_from(checkpoint.tensor(stored.nf4_absmax_map_tensor));
  weight.nf4.offset = read_single_value(checkpoint, stored.nf4_absmax_offset_tensor);
}

}  // namespace

std::optional<QuantFormat> StoredWeight::format() const {
  switch (encoding) {
    case StoredEncoding::float_weight: return std::nullopt;
    case StoredEncoding::fp8_e4m3: return QuantFormat::fp8_e4m3;
    case StoredEncoding::int8: return QuantFormat::int8;
    case StoredEncoding::nf4: return QuantFormat::nf4;
  }
  return std::nullopt;
}

StoredWeight inspect_stored_weight(const SafetensorsCheckpoint& checkpoint,
                                   std::string_view weight_tensor) {
  if (!weight_tensor.ends_with(kWeightSuffix)) {
    throw Error(fmt::format("inspect_stored_weight: \"{}\" is not a \"<module>.weight\" name",
                            weight_tensor));
  }
  const TensorInfo& info = checkpoint.info(weight_tensor);
  const LayoutTensors tensors(checkpoint, weight_tensor);

  StoredWeight stored;
  stored.weight_tensor = std::string(weight_tensor);
  stored.auxiliary_tensors = tensors.names();
  if (!info.dtype) {
    tensors.reject_weight(
        fmt::format("has dtype {}, which is not a weight dtype; expected BF16, "
                    "F16, F32, F8_E4M3, I8 or this engine's nf4 layout (U8)",
                    info.stored_dtype));
  }
  stored.weight_dtype = *info.dtype;
  if (info.shape.size() == 2) {
    stored.out_features = info.shape[0];
    stored.in_features = info.shape[1];
  }

  switch (stored.weight_dtype) {
    case DType::f32:
    case DType::bf16:
    case DType::f16:
      stored.encoding = StoredEncoding::float_weight;
      inspect_float(tensors, stored);
      break;
    case DType::fp8_e4m3:
      require_matrix(tensors, info);
      stored.encoding = StoredEncoding::fp8_e4m3;
      inspect_fp8(checkpoint, tensors, stored);
      break;
    case DType::int8:
      require_matrix(tensors, info);
      stored.encoding = StoredEncoding::int8;
      inspect_int8(checkpoint, tensors, stored);
      break;
    case DType::uint8:
      if (!tensors.has(kNf4AbsmaxSuffix)) {
        tensors.reject_weight(
            "is U8 without the nf4 fields of this engine (\"<module>.weight_absmax\" and the "
            "others); packed 4-bit layouts of other tools (bitsandbytes, nvfp4) are not read; "
            "convert a bf16 copy with `ethereal quantize`");
      }
      require_matrix(tensors, info);
      stored.encoding = StoredEncoding::nf4;
      stored.in_features = 2 * info.shape[1];
      inspect_nf4(tensors, stored);
      break;
    case DType::fp8_e5m2:
      tensors.reject_weight(
          "is fp8 e5m2, which this engine does not read; use an fp8 e4m3 (\"e4m3fn\") or bf16 "
          "checkpoint");
    default:
      tensors.reject_weight(
          fmt::format("has dtype {}, which is not a weight dtype; expected BF16, "
                      "F16, F32, F8_E4M3, I8 or this engine's nf4 layout (U8)",
                      info.stored_dtype));
  }
  return stored;
}

Shape stored_weight_shape(const SafetensorsCheckpoint& checkpoint, std::string_view weight_tensor) {
  const TensorInfo& info = checkpoint.info(weight_tensor);
  Shape shape = info.shape;
  if (info.dtype == DType::uint8 && shape.size() == 2 && weight_tensor.ends_with(kWeightSuffix)) {
    const std::string absmax =
        std::string(weight_tensor.substr(0, weight_tensor.size() - kWeightSuffix.size())) + "." +
        std::string(kNf4AbsmaxSuffix);
    if (checkpoint.contains(absmax)) {
      shape[1] *= 2;
    }
  }
  return shape;
}

QuantizedWeight read_stored_weight(const SafetensorsCheckpoint& checkpoint,
                                   const StoredWeight& stored) {
  QuantizedWeight weight = empty_weight(stored);
  weight.values =
      Tensor::empty({stored.out_features, stored.in_features}, values_dtype(weight.format));
  copy_bytes(checkpoint, stored.weight_tensor, weight.values);
  if (weight.format == QuantFormat::nf4) {
    weight.nf4.absmax_codes = Tensor::empty({weight.nf4_block_count()}, DType::uint8);
    copy_bytes(checkpoint, stored.nf4_absmax_tensor, weight.nf4.absmax_codes);
    read_nf4_scales(checkpoint, stored, weight);
  } else {
    weight.scales = read_scales(checkpoint, stored);
  }
  validate(weight, stored.weight_tensor);
  return weight;
}

QuantizedWeight map_stored_weight(const SafetensorsCheckpoint& checkpoint,
                                  const StoredWeight& stored) {
  QuantizedWeight weight = empty_weight(stored);
  weight.values = file_view(checkpoint, stored.weight_tensor,
                            {stored.out_features, stored.in_features}, values_dtype(weight.format));
  if (weight.format == QuantFormat::nf4) {
    weight.nf4.absmax_codes =
        file_view(checkpoint, stored.nf4_absmax_tensor, {weight.nf4_block_count()}, DType::uint8);
    read_nf4_scales(checkpoint, stored, weight);
  } else {
    weight.scales = read_scales(checkpoint, stored);
  }
  validate(weight, stored.weight_tensor);
  return weight;
}

Tensor decode_stored_weight(const SafetensorsCheckpoint& checkpoint, const StoredWeight& stored,
                            DType dtype) {
  if (stored.is_quantized()) {
    return dequantize(map_stored_weight(checkpoint, stored), dtype);
  }
  if (stored.scale_tensor.empty()) {
    return checkpoint.tensor(stored.weight_tensor);
  }
  const Tensor weight = checkpoint.tensor(stored.weight_tensor);
  Tensor scaled = Tensor::empty(weight.shape(), DType::f32);
  if (scaled.is_dry()) {
    return scaled;
  }
  scaled.copy_from(weight);
  const float scale = read_single_value(checkpoint, stored.scale_tensor);
  float* values = scaled.data_as<float>();
  parallel_for(0, scaled.numel(), 1 << 16, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      values[i] *= scale;
    }
  });
  return scaled;
}

}  // namespace ethereal::quant
