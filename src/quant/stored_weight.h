// How a linear layer's weight is stored in a safetensors checkpoint, and reading it into a
// QuantizedWeight.
//
// For a module M (the weight tensor "M.weight"), the layouts recognised are:
//
//   float        M.weight bf16, f16 or f32 [out, in]. Not quantised. Legacy ComfyUI
//                "scaled fp8" files may add a per-tensor M.scale_weight (usually 1) to layers
//                they keep in high precision. The weight then decodes as M.weight * scale.
//   fp8_e4m3     M.weight F8_E4M3 [out, in] with an optional scale (W = fp8 * scale):
//                - no scale: a plain cast such as ComfyUI's "*_fp8_e4m3fn" files (scale 1);
//                - M.scale_weight, one f32 per tensor, shape [] or [1] (ComfyUI "scaled fp8",
//                  files that also carry a top-level "scaled_fp8" marker tensor);
//                - M.weight_scale, per tensor ([] or [1]) or per output channel ([out] or
//                  [out, 1]) (ComfyUI "fp8mixed" files and lightx2v's per-channel files);
//                - M.comfy_quant, uint8 bytes of a JSON object such as
//                  {"format": "float8_e4m3fn"}, which names the format of the layer.
//   int8         M.weight I8 [out, in] with M.weight_scale (or M.scale_weight) f32, per output
//                channel ([out] or [out, 1]) or per tensor ([] or [1]): W = q * scale. This
//                engine writes [out].
//   nf4          This engine's layout (docs/quantization.md). M.weight U8 [out, in / 2]
//                stores two 4-bit codes per byte in the order of DType::packed4, so
//                in_features must be even. The fields of Nf4BlockScales are
//                M.weight_absmax U8 [blocks], M.weight_absmax_scale F32 [groups],
//                M.weight_absmax_map F32 [256] and M.weight_absmax_offset F32 [1] (or []).
//                The presence of M.weight_absmax marks the layout.
//
// Scales may be stored as f32, bf16 or f16; they are read as f32.
// NOTE: M.input_scale and M.scale_input (activation scales of fp8 matmuls) are accepted and
// ignored, because this engine computes activations in bf16. Results can therefore differ
// slightly from runtimes that quantise activations with them.
//
// Anything else under "M." besides M.weight and M.bias is quantisation metadata this engine
// does not know (for example weight_scale_2 of nvfp4, or bitsandbytes' "M.weight.absmax"), and
// is rejected, as are fp8 e5m2 weights, comfy_quant formats other than float8_e4m3fn, and
// scales of another shape. Every error is an InvalidInputError naming the file and the tensor.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/safetensors_checkpoint.h"
#include "quant/quant_format.h"
#include "runtime/tensor.h"

namespace ethereal::quant {

// The suffixes, after "<module>.", of the tensors that a stored layout may add to a weight.
inline constexpr std::string_view kScaleWeightSuffix = "scale_weight";
inline constexpr std::string_view kWeightScaleSuffix = "weight_scale";
inline constexpr std::string_view kComfyQuantSuffix = "comfy_quant";
inline constexpr std::string_view kInputScaleSuffix = "input_scale";
inline constexpr std::string_view kScaleInputSuffix = "scale_input";
inline constexpr std::string_view kNf4AbsmaxSuffix = "weight_absmax";
inline constexpr std::string_view kNf4AbsmaxScaleSuffix = "weight_absmax_scale";
inline constexpr std::string_view kNf4AbsmaxMapSuffix = "weight_absmax_map";
inline constexpr std::string_view kNf4AbsmaxOffsetSuffix = "weight_absmax_offset";

// The top-level marker tensor of ComfyUI "scaled fp8" checkpoints (an empty fp8 tensor).
inline constexpr std::string_view kScaledFp8Marker = "scaled_fp8";

enum class StoredEncoding : std::uint8_t { float_weight, fp8_e4m3, int8, nf4 };

// The layout of one stored linear weight, from the checkpoint's headers (and the few bytes of a
// comfy_quant tensor). Tensor names are as stored in the file.
struct StoredWeight {
  StoredEncoding encoding = StoredEncoding::float_weight;
  std::string weight_tensor;  // "<module>.weight"
  DType weight_dtype = DType::bf16;
  // The matrix [out, in] the tensors decode to (for nf4 twice the stored columns).
  std::int64_t out_features = 0;
  std::int64_t in_features = 0;
  // The scale tensor of fp8 and int8 (and of a scaled float weight), or empty: unscaled fp8 has
  // scale 1, a float weight without it is used as stored.
  std::string scale_tensor;
  ScaleGranularity scale_granularity = ScaleGranularity::per_tensor;
  // nf4 only: the tensors of Nf4BlockScales.
  std::string nf4_absmax_tensor;
  std::string nf4_absmax_scale_tensor;
  std::string nf4_absmax_map_tensor;
  std::string nf4_absmax_offset_tensor;
  // Every tensor of the layout besides the weight: scales, comfy_quant, ignored activation
  // scales and the nf4 fields. The loader marks them used.
  std::vector<std::string> auxiliary_tensors;

  bool is_quantized() const { return encoding != StoredEncoding::float_weight; }
  // The QuantFormat of a quantised encoding; nullopt for float_weight.
  std::optional<QuantFormat> format() const;
};

// Reads the layout of the weight tensor `weight_tensor` (a file name such as
// "model.diffusion_model.transformer_blocks.0.attn.to_q.weight"). Throws InvalidInputError
// naming the file and the tensor for the cases listed at the top of this file. A float weight
// of any rank is accepted; quantised weights must be 2-D (nf4: U8 [out, in / 2]).
StoredWeight inspect_stored_weight(const SafetensorsCheckpoint& checkpoint,
                                   std::string_view weight_tensor);

// The shape the weight tensor decodes to: the stored shape, except for the nf4 layout (a U8
// tensor with an "<module>.weight_absmax" partner), which stores two codes per byte. Reads
// headers only and never throws for an unknown layout (inspect_stored_weight does).
Shape stored_weight_shape(const SafetensorsCheckpoint& checkpoint, std::string_view weight_tensor);

// Copies a quantised weight into tensors from the current allocator. Unscaled fp8 gets a
// per-tensor scale of 1, and int8 scales stored per tensor are repeated for every channel. In a
// dry run the same tensors are allocated and nothing is read. Throws Error when `stored` is a
// float weight.
QuantizedWeight read_stored_weight(const SafetensorsCheckpoint& checkpoint,
                                   const StoredWeight& stored);

// Like read_stored_weight, but `values` and the nf4 absmax codes are zero-copy views into the
// read-only file mapping; only the small scale tensors are allocated. For decoding the weight
// once (dequantize) without a second copy; never write to the views.
QuantizedWeight map_stored_weight(const SafetensorsCheckpoint& checkpoint,
                                  const StoredWeight& stored);

// The matrix [out, in] that `stored` decodes to. A plain float weight is returned as a zero-copy
// view of the mapped file in its stored dtype (never write to it). Other weights are decoded into
// a new tensor of `dtype` (f32 or bf16) from the current allocator: quantised ones straight from
// the mapped bytes, a float weight with a scale_weight as weight * scale (always f32). In a dry
// run the same tensors are allocated and nothing is read.
Tensor decode_stored_weight(const SafetensorsCheckpoint& checkpoint, const StoredWeight& stored,
                            DType dtype);

}  // namespace ethereal::quant
