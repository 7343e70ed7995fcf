#include "quant/quantize.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "quant/encoders.h"
#include "quant/weight_decoder.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace ethereal::quant {

namespace {

constexpr float kFp8Max = 448.0f;
constexpr float kInt8Max = 127.0f;

bool skip_compute(const Tensor& weight) {
  return dry_run_active() || weight.is_dry();
}

// Checks the weight and returns it contiguous (a copy only when it is strided).
Tensor contiguous_weight(const Tensor& weight, QuantFormat format) {
  const std::string_view name = quant_format_name(format);
  if (!weight.defined() || weight.dim() != 2 || weight.size(0) <= 0 || weight.size(1) <= 0) {
    throw InvalidInputError(fmt::format(
        "quantize {}: weight is {}; expected a 2-D tensor [out_features, in_features] with "
        "positive sizes",
        name, weight.defined() ? weight.describe() : "an undefined tensor"));
  }
  const DType dtype = weight.dtype();
  if (dtype != DType::f32 && dtype != DType::bf16 && dtype != DType::f16) {
    throw InvalidInputError(fmt::format(
        "quantize {}: weight {} has dtype {}; expected f32, bf16 or f16 (quantise from the "
        "unquantised checkpoint)",
        name, weight.describe(), dtype_name(dtype)));
  }
  return weight.contiguous();
}

// Converts bf16 bits to f32 and returns false when one of them is not finite.
bool read_bf16(const std::uint16_t* in, std::int64_t count, float* out) {
  std::uint32_t nonfinite = 0;
  for (std::int64_t i = 0; i < count; ++i) {
    out[i] = std::bit_cast<float>(static_cast<std::uint32_t>(in[i]) << 16);
    nonfinite |= (in[i] & 0x7F80u) == 0x7F80u ? 1u : 0u;
  }
  return nonfinite == 0;
}

// Copies f32 values and returns false when one of them is not finite.
bool read_f32(const float* in, std::int64_t count, float* out) {
  std::uint32_t nonfinite = 0;
  for (std::int64_t i = 0; i < count; ++i) {
    out[i] = in[i];
    nonfinite |= (std::bit_cast<std::uint32_t>(in[i]) & 0x7F800000u) == 0x7F800000u ? 1u : 0u;
  }
  return nonfinite == 0;
}

// Reads `count` elements of a contiguous weight from flat index `first` as f32 and throws
// InvalidInputError naming the first one that is not finite.
void read_finite(const Tensor& source, QuantFormat format, std::int64_t first, std::int64_t count,
                 float* out) {
  const auto* element = static_cast<const std::uint8_t*>(source.data()) +
                        dtype_bytes(source.dtype(), static_cast<std::size_t>(first));
  bool finite = true;
  if (source.dtype() == DType::bf16) {
    finite = read_bf16(reinterpret_cast<const std::uint16_t*>(element), count, out);
  } else if (source.dtype() == DType::f32) {
    finite = read_f32(reinterpret_cast<const float*>(element), count, out);
  } else {
    convert_elements(element, source.dtype(), out, DType::f32, static_cast<std::size_t>(count));
    finite = std::all_of(out, out + count, [](float value) { return std::isfinite(value); });
  }
  if (finite) {
    return;
  }
  for (std::int64_t i = 0; i < count; ++i) {
    if (!std::isfinite(out[i])) {
      const std::int64_t index = first + i;
      throw InvalidInputError(fmt::format(
          "quantize {}: weight element [{}, {}] is {}; quantisation needs finite weights, so "
          "check the checkpoint this weight came from",
          quant_format_name(format), index / source.size(1), index % source.size(1), out[i]));
    }
  }
}

// Runs fn(row, values) for every row of `source` on the thread pool, `values` being the row as
// f32 (checked finite).
void for_each_row(const Tensor& source, QuantFormat format,
                  const std::function<void(std::int64_t, const float*)>& fn) {
  const std::int64_t rows = source.size(0);
  const std::int64_t cols = source.size(1);
  const std::int64_t grain = std::max<std::int64_t>(1, 16384 / cols);
  parallel_for(0, rows, grain, [&](std::int64_t begin, std::int64_t end) {
    std::vector<float> row(static_cast<std::size_t>(cols));
    for (std::int64_t n = begin; n < end; ++n) {
      read_finite(source, format, n * cols, cols, row.data());
      fn(n, row.data());
    }
  });
}

// The largest |value| of finite values. For finite floats the order of the magnitudes is the
// order of their bit patterns as unsigned integers, and an integer max loop vectorises.
float max_abs(const float* values, std::int64_t count) {
  std::uint32_t largest = 0;
  for (std::int64_t i = 0; i < count; ++i) {
    largest = std::max(largest, std::bit_cast<std::uint32_t>(values[i]) & 0x7FFFFFFFu);
  }
  return std::bit_cast<float>(largest);
}

// amax / limit, or 1 for an all-zero range so that decoding never divides by zero.
float scale_for(float amax, float limit) {
  return amax > 0.0f ? amax / limit : 1.0f;
}

// The scale of one row (int8, and fp8 per channel).
float channel_scale(const float* row, std::int64_t cols, float limit) {
  return scale_for(max_abs(row, cols), limit);
}

// The one fp8 scale of a weight with per-tensor scales.
float fp8_tensor_scale(const Tensor& source) {
  std::vector<float> row_amax(static_cast<std::size_t>(source.size(0)));
  for_each_row(source, QuantFormat::fp8_e4m3, [&](std::int64_t n, const float* row) {
    row_amax[static_cast<std::size_t>(n)] = max_abs(row, source.size(1));
  });
  return scale_for(*std::max_element(row_amax.begin(), row_amax.end()), kFp8Max);
}

// The tensors of a quantised `source`, unfilled, in the order quantize() allocates them. The
// values tensor is left undefined unless `with_values`; nf4 also returns its temporary block
// absmax tensor.
QuantizedWeight allocate_parts(const Tensor& source, QuantFormat format,
                               ScaleGranularity fp8_scales, bool with_values,
                               Tensor* nf4_absmax = nullptr) {
  QuantizedWeight q;
  q.format = format;
  q.out_features = source.size(0);
  q.in_features = source.size(1);
  const Shape shape = {q.out_features, q.in_features};
  switch (format) {
    case QuantFormat::fp8_e4m3:
      if (with_values) {
        q.values = Tensor::empty(shape, DType::fp8_e4m3);
      }
      q.scales = Tensor::empty(
          {fp8_scales == ScaleGranularity::per_tensor ? std::int64_t{1} : q.out_features},
          DType::f32);
      break;
    case QuantFormat::int8:
      if (with_values) {
        q.values = Tensor::empty(shape, DType::int8);
      }
      q.scales = Tensor::empty({q.out_features}, DType::f32);
      break;
    case QuantFormat::nf4: {
      const std::int64_t blocks = q.nf4_block_count();
      const std::int64_t groups = (blocks + kNf4AbsmaxGroupSize - 1) / kNf4AbsmaxGroupSize;
      if (with_values) {
        q.values = Tensor::empty(shape, DType::packed4);
      }
      q.nf4.absmax_codes = Tensor::empty({blocks}, DType::uint8);
      q.nf4.group_scales = Tensor::empty({groups}, DType::f32);
      q.nf4.code_map = Tensor::empty({256}, DType::f32);
      *nf4_absmax = Tensor::empty({blocks}, DType::f32);
      break;
    }
  }
  return q;
}

// First level of nf4: the absmax of every 64-element block, in flat order.
void compute_block_absmax(const Tensor& source, std::int64_t blocks, float* absmax) {
  const std::int64_t numel = source.numel();
  parallel_for(0, blocks, 256, [&](std::int64_t begin, std::int64_t end) {
    float values[kNf4BlockSize];
    for (std::int64_t b = begin; b < end; ++b) {
      const std::int64_t first = b * kNf4BlockSize;
      const std::int64_t count = std::min(kNf4BlockSize, numel - first);
      read_finite(source, QuantFormat::nf4, first, count, values);
      absmax[b] = max_abs(values, count);
    }
  });
}

// Second level of nf4: quantises absmax - offset per group of 256 blocks with the linear map.
void quantize_block_absmax(const float* absmax, std::int64_t blocks, Nf4BlockScales& scales) {
  float* map = scales.code_map.data_as<float>();
  for (int q = 0; q < 256; ++q) {
    map[q] = static_cast<float>(q - 128) / 127.0f;
  }
  double sum = 0.0;
  for (std::int64_t b = 0; b < blocks; ++b) {
    sum += absmax[b];
  }
  const float offset = static_cast<float>(sum / static_cast<double>(blocks));
  scales.offset = offset;

  const std::int64_t groups = scales.group_scales.numel();
  auto* codes = scales.absmax_codes.data_as<std::uint8_t>();
  float* group_scales = scales.group_scales.data_as<float>();
  parallel_for(0, groups, 16, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t g = begin; g < end; ++g) {
      const std::int64_t first = g * kNf4AbsmaxGroupSize;
      const std::int64_t last = std::min(blocks, first + kNf4AbsmaxGroupSize);
      float spread = 0.0f;
      for (std::int64_t b = first; b < last; ++b) {
        spread = std::max(spread, std::fabs(absmax[b] - offset));
      }
      const float scale = spread > 0.0f ? spread : 1.0f;
      group_scales[g] = scale;
      for (std::int64_t b = first; b < last; ++b) {
        const float q = 128.0f + std::nearbyint(127.0f * (absmax[b] - offset) / scale);
        codes[b] = static_cast<std::uint8_t>(std::clamp(q, 1.0f, 255.0f));
      }
    }
  });
}

// Fills the scales of `q` from `source`: both levels of nf4 (`absmax` is the temporary of
// allocate_parts), the fp8 scale of the tensor or the scale of every row.
void fill_scales(const Tensor& source, QuantizedWeight& q, const Tensor& absmax) {
  float* scales = q.scales.defined() ? q.scales.data_as<float>() : nullptr;
  switch (q.format) {
    case QuantFormat::fp8_e4m3:
      if (q.scales.numel() == 1) {
        scales[0] = fp8_tensor_scale(source);
        return;
      }
      for_each_row(source, q.format, [&](std::int64_t n, const float* row) {
        scales[n] = channel_scale(row, q.in_features, kFp8Max);
      });
      return;
    case QuantFormat::int8:
      for_each_row(source, q.format, [&](std::int64_t n, const float* row) {
        scales[n] = channel_scale(row, q.in_features, kInt8Max);
      });
      return;
    case QuantFormat::nf4:
      compute_block_absmax(source, q.nf4_block_count(), absmax.data_as<float>());
      quantize_block_absmax(absmax.data_as<float>(), q.nf4_block_count(), q.nf4);
      return;
  }
}

// Writes the 4-bit codes of every block, normalising by the decoded block absmax.
void encode_nf4_values(const Tensor& source, const QuantizedWeight& q) {
  const detail::WeightView view(q);
  const std::int64_t numel = source.numel();
  auto* packed = q.values.data_as<std::uint8_t>();
  parallel_for(0, q.nf4_block_count(), 256, [&](std::int64_t begin, std::int64_t end) {
    float values[kNf4BlockSize];
    for (std::int64_t b = begin; b < end; ++b) {
      const std::int64_t first = b * kNf4BlockSize;
      const std::int64_t count = std::min(kNf4BlockSize, numel - first);
      read_finite(source, QuantFormat::nf4, first, count, values);
      const float absmax = view.block_absmax(b);
      // Blocks hold an even number of elements, so no two blocks share a byte.
      std::uint8_t* out = packed + first / 2;
      // A decoded absmax that is not positive only happens for (nearly) all-zero blocks. Their
      // codes are 7 (0.0); the nibble after the last element of an odd-sized weight stays 0.
      if (!(absmax > 0.0f && std::isfinite(absmax))) {
        std::fill(out, out + count / 2, std::uint8_t{0x77});
        if (count % 2 != 0) {
          out[count / 2] = 0x07;
        }
        continue;
      }
      encode_nf4(values, count, absmax, out);
    }
  });
}

}  // namespace

QuantizedWeight quantize(const Tensor& weight, QuantFormat format, const QuantizeOptions& options) {
  switch (format) {
    case QuantFormat::fp8_e4m3: return quantize_fp8_e4m3(weight, options.fp8_scales);
    case QuantFormat::nf4: return quantize_nf4(weight);
    case QuantFormat::int8: return quantize_int8(weight);
  }
  throw Error("quantize: unknown quantisation format");
}

QuantizedWeight compute_scales(const Tensor& weight, QuantFormat format,
                               const QuantizeOptions& options) {
  const Tensor source = contiguous_weight(weight, format);
  Tensor absmax;
  QuantizedWeight q = allocate_parts(source, format, options.fp8_scales, false, &absmax);
  if (!skip_compute(source)) {
    fill_scales(source, q, absmax);
  }
  return q;
}

QuantizedWeight quantize_fp8_e4m3(const Tensor& weight, ScaleGranularity granularity) {
  const Tensor source = contiguous_weight(weight, QuantFormat::fp8_e4m3);
  QuantizedWeight q = allocate_parts(source, QuantFormat::fp8_e4m3, granularity, true);
  if (skip_compute(source)) {
    return q;
  }

  // Per tensor, the scale needs a pass over the whole weight first. Per channel, each row's
  // scale and codes come from one read of the row.
  const bool per_tensor = granularity == ScaleGranularity::per_tensor;
  float* scales = q.scales.data_as<float>();
  if (per_tensor) {
    scales[0] = fp8_tensor_scale(source);
  }
  auto* values = q.values.data_as<std::uint8_t>();
  for_each_row(source, q.format, [&](std::int64_t n, const float* row) {
    if (!per_tensor) {
      scales[n] = channel_scale(row, q.in_features, kFp8Max);
    }
    // Saturates at +-448.
    encode_fp8_e4m3(row, q.in_features, per_tensor ? scales[0] : scales[n],
                    values + n * q.in_features);
  });
  return q;
}

QuantizedWeight quantize_int8(const Tensor& weight) {
  const Tensor source = contiguous_weight(weight, QuantFormat::int8);
  QuantizedWeight q =
      allocate_parts(source, QuantFormat::int8, ScaleGranularity::per_channel, true);
  if (skip_compute(source)) {
    return q;
  }

  float* scales = q.scales.data_as<float>();
  auto* values = q.values.data_as<std::int8_t>();
  for_each_row(source, q.format, [&](std::int64_t n, const float* row) {
    scales[n] = channel_scale(row, q.in_features, kInt8Max);
    encode_int8(row, q.in_features, scales[n], values + n * q.in_features);
  });
  return q;
}

QuantizedWeight quantize_nf4(const Tensor& weight) {
  const Tensor source = contiguous_weight(weight, QuantFormat::nf4);
  Tensor absmax;
  QuantizedWeight q =
      allocate_parts(source, QuantFormat::nf4, ScaleGranularity::per_channel, true, &absmax);
  if (skip_compute(source)) {
    return q;
  }

  fill_scales(source, q, absmax);
  encode_nf4_values(source, q);
  return q;
}

Tensor dequantize(const QuantizedWeight& weight, DType dtype) {
  validate(weight);
  if (dtype != DType::f32 && dtype != DType::bf16) {
    throw Error(fmt::format("dequantize: output dtype {} is not supported; expected f32 or bf16",
                            dtype_name(dtype)));
  }
  Tensor out = Tensor::empty({weight.out_features, weight.in_features}, dtype);
  if (dry_run_active() || weight.is_dry()) {
    return out;
  }

  const detail::WeightView view(weight);
  const std::int64_t cols = weight.in_features;
  const std::int64_t grain = std::max<std::int64_t>(1, 16384 / cols);
  parallel_for(0, weight.out_features, grain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t n = begin; n < end; ++n) {
      if (dtype == DType::f32) {
        float* row = out.data_as<float>() + n * cols;
        for (std::int64_t k = 0; k < cols; ++k) {
          row[k] = view.value(n, k);
        }
      } else {
        std::uint16_t* row = out.data_as<std::uint16_t>() + n * cols;
        for (std::int64_t k = 0; k < cols; ++k) {
          row[k] = detail::to_bf16_bits(view.value(n, k));
        }
      }
    }
  });
  return out;
}

Tensor nf4_block_absmax(const QuantizedWeight& weight) {
  validate(weight);
  if (weight.format != QuantFormat::nf4) {
    throw Error(fmt::format("nf4_block_absmax: the weight is {}, not nf4",
                            quant_format_name(weight.format)));
  }
  const std::int64_t blocks = weight.nf4_block_count();
  Tensor out = Tensor::empty({blocks}, DType::f32);
  if (dry_run_active() || weight.is_dry()) {
    return out;
  }
  const detail::WeightView view(weight);
  float* absmax = out.data_as<float>();
  for (std::int64_t b = 0; b < blocks; ++b) {
    absmax[b] = view.block_absmax(b);
  }
  return out;
}

}  // namespace ethereal::quant
