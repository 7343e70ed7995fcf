// Quantised weight formats for linear layers: fp8_e4m3, nf4 and int8.
//
// A QuantizedWeight stores one weight matrix W [out_features, in_features] (PyTorch's
// nn.Linear layout) in one of three formats. Every part is a Tensor drawn from the current
// allocator, so allocator statistics and the dry-run planner count it. docs/quantization.md
// describes the byte layouts in full; in short:
//
// fp8_e4m3  values: fp8_e4m3 [out, in], the "fn" variant (max finite 448, no infinities).
//           scales: f32 [1] (one per tensor) or [out] (one per output channel).
//           W[n, k] = fp8_to_f32(values[n, k]) * scale, with scale = amax / 448 so the largest
//           magnitude lands on 448. amax is over the tensor or over row n.
// int8      values: int8 [out, in], symmetric, in [-127, 127]; scales: f32 [out].
//           W[n, k] = values[n, k] * scales[n], with scales[n] = amax(row n) / 127.
// nf4       values: packed4 [out, in]. Element i of W in row-major order (i = n * in + k) is
//           the 4-bit code of byte i / 2: the LOW nibble for even i, the HIGH nibble for odd
//           i (the order of DType::packed4; bitsandbytes uses the opposite nibble order).
//           Code c means kNf4Codebook[c]. Blocks of kNf4BlockSize consecutive elements of that
//           flat order share one absmax; the last block may be shorter. The block absmax
//           values are themselves quantised ("double quantisation"), see Nf4BlockScales.
//           W[i] = kNf4Codebook[code(i)] * absmax(i / 64).
//
// An all-zero channel or tensor gets scale 1 for fp8 and int8 (every value is then 0), so
// decoding never divides by zero.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "runtime/tensor.h"

namespace ethereal::quant {

enum class QuantFormat : std::uint8_t { fp8_e4m3, nf4, int8 };

// Lower-case name used in configuration and logs: "fp8_e4m3", "nf4", "int8".
std::string_view quant_format_name(QuantFormat format);
// Parses a name from quant_format_name; throws InvalidInputError naming the value otherwise.
QuantFormat parse_quant_format(std::string_view name);

// Scale granularity of fp8 weights: one scale per tensor or per output channel. int8 is always
// per channel.
enum class ScaleGranularity : std::uint8_t { per_tensor, per_channel };

// The 16 NormalFloat-4 values of the QLoRA paper (Dettmers et al., 2023), in code order.
inline constexpr std::array<float, 16> kNf4Codebook = {-1.0f,
                                                       -0.6961928009986877f,
                                                       -0.5250730514526367f,
                                                       -0.39491748809814453f,
                                                       -0.28444138169288635f,
                                                       -0.18477343022823334f,
                                                       -0.09105003625154495f,
                                                       0.0f,
                                                       0.07958029955625534f,
                                                       0.16093020141124725f,
                                                       0.24611230194568634f,
                                                       0.33791524171829224f,
                                                       0.44070982933044434f,
                                                       0.5626170039176941f,
                                                       0.7229568362236023f,
                                                       1.0f};

// Elements of W (in flat row-major order) that share one absmax.
inline constexpr std::int64_t kNf4BlockSize = 64;
// Block absmax values that share one f32 scale in the second quantisation level.
inline constexpr std::int64_t kNf4AbsmaxGroupSize = 256;

// The block absmax values of an nf4 weight, quantised to 8 bits:
//   absmax(b) = fma(code_map[absmax_codes[b]], group_scales[b / 256], offset)
// where offset is the mean of all block absmax values. The quantiser fills code_map with the
// linear map code_map[q] = (q - 128) / 127 (q = 1 ... 255 covers [-1, 1]; q = 0 is unused) and
// picks q = 128 + round(127 * (absmax - offset) / group_scale) with group_scale the largest
// |absmax - offset| in the group (1 for a group where all are equal). Decoding only reads the
// table, so any monotonic 256-entry map (such as bitsandbytes' dynamic map) decodes the same way.
struct Nf4BlockScales {
  Tensor absmax_codes;  // uint8 [blocks], blocks = ceil(out * in / 64)
  Tensor group_scales;  // f32 [ceil(blocks / 256)]
  Tensor code_map;      // f32 [256]
  float offset = 0.0f;
};

struct QuantizedWeight {
  QuantFormat format = QuantFormat::int8;
  std::int64_t out_features = 0;
  std::int64_t in_features = 0;
  // fp8_e4m3 [out, in], int8 [out, in] or packed4 [out, in], contiguous.
  Tensor values;
  // fp8_e4m3: f32 [1] or [out]; int8: f32 [out]; nf4: undefined.
  Tensor scales;
  // nf4 only.
  Nf4BlockScales nf4;

  // Bytes of every tensor above together.
  std::size_t nbytes() const;
  // Number of nf4 blocks: ceil(out * in / 64).
  std::int64_t nf4_block_count() const;
  bool is_dry() const { return values.is_dry(); }
};

// Checks that the tensors of `weight` have the shapes and dtypes described above. Throws
// InvalidInputError naming `name` (for example the checkpoint tensor; may be empty), the field,
// the expected and the actual shape or dtype.
void validate(const QuantizedWeight& weight, std::string_view name = {});

}  // namespace ethereal::quant
