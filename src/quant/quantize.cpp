#include "quant/quantize.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <vector>

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

// Reads `count` elements of a contiguous weight from flat index `first` as f32 and throws
// InvalidInputError naming the first one that is not finite.
void read_finite(const Tensor& source, QuantFormat format, std::int64_t first, std::int64_t count,
                 float* out) {
  const auto* base = static_cast<const std::uint8_t*>(source.data());
  convert_elements(base + dtype_bytes(source.dtype(), static_cast<std::size_t>(first)),
                   source.dtype(), out, DType::f32, static_cast<std::size_t>(count));
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

float max_abs(const float* values, std::int64_t count) {
  float result = 0.0f;
  for (std::int64_t i = 0; i < count; ++i) {
    result = std::max(result, std::fabs(values[i]));
  }
  return result;
}

// amax / limit, or 1 for an all-zero range so that decoding never divides by zero.
float scale_for(float amax, float limit) {
  return amax > 0.0f ? amax / limit : 1.0f;
}

QuantizedWeight empty_weight(QuantFormat format, const Tensor& source) {
  QuantizedWeight q;
  q.format = format;
  q.out_features = source.size(0);
  q.in_features = source.size(1);
  return q;
}

// Midpoints between consecutive nf4 code values: a value above midpoint j rounds to code j + 1.
constexpr std::array<float, 15> nf4_midpoints() {
  std::array<float, 15> result{};
  for (std::size_t j = 0; j < result.size(); ++j) {
    result[j] = (kNf4Codebook[j] + kNf4Codebook[j + 1]) / 2.0f;
  }
  return result;
}

// Returns the nearest nf4 code of `normalised`, a weight divided by its block absmax. A tie goes
// to the lower code, and a value outside [-1, 1] to the end code on its side.
int nearest_nf4_code(float normalised) {
  static constexpr std::array<float, 15> kMidpoints = nf4_midpoints();
  int code = 0;
  for (float midpoint : kMidpoints) {
    code += normalised > midpoint ? 1 : 0;
  }
  return code;
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
      // A decoded absmax that is not positive only happens for (nearly) all-zero blocks.
      const bool usable = absmax > 0.0f && std::isfinite(absmax);
      // Blocks hold an even number of elements, so no two blocks share a byte.
      for (std::int64_t i = 0; i < count; i += 2) {
        // Code 7 is 0.0; the nibble after the last element of an odd-sized weight stays 0.
        int codes[2] = {0, 0};
        for (std::int64_t j = 0; j < 2 && i + j < count; ++j) {
          codes[j] = usable ? nearest_nf4_code(values[i + j] / absmax) : 7;
        }
        packed[(first + i) / 2] = static_cast<std::uint8_t>(codes[0] | (codes[1] << 4));
      }
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

QuantizedWeight quantize_fp8_e4m3(const Tensor& weight, ScaleGranularity granularity) {
  const Tensor source = contiguous_weight(weight, QuantFormat::fp8_e4m3);
  QuantizedWeight q = empty_weight(QuantFormat::fp8_e4m3, source);
  const bool per_tensor = granularity == ScaleGranularity::per_tensor;
  q.values = Tensor::empty({q.out_features, q.in_features}, DType::fp8_e4m3);
  q.scales = Tensor::empty({per_tensor ? 1 : q.out_features}, DType::f32);
  if (skip_compute(source)) {
    return q;
  }

  float* scales = q.scales.data_as<float>();
  std::vector<float> row_amax(static_cast<std::size_t>(q.out_features));
  for_each_row(source, q.format, [&](std::int64_t n, const float* row) {
    row_amax[static_cast<std::size_t>(n)] = max_abs(row, q.in_features);
  });
  if (per_tensor) {
    scales[0] = scale_for(*std::max_element(row_amax.begin(), row_amax.end()), kFp8Max);
  } else {
    for (std::int64_t n = 0; n < q.out_features; ++n) {
      scales[n] = scale_for(row_amax[static_cast<std::size_t>(n)], kFp8Max);
    }
  }

  auto* values = q.values.data_as<std::uint8_t>();
  for_each_row(source, q.format, [&](std::int64_t n, const float* row) {
    const float scale = per_tensor ? scales[0] : scales[n];
    std::uint8_t* out = values + n * q.in_features;
    for (std::int64_t k = 0; k < q.in_features; ++k) {
      out[k] = f32_to_fp8_e4m3(row[k] / scale);  // saturates at +-448
    }
  });
  return q;
}

QuantizedWeight quantize_int8(const Tensor& weight) {
  const Tensor source = contiguous_weight(weight, QuantFormat::int8);
  QuantizedWeight q = empty_weight(QuantFormat::int8, source);
  q.values = Tensor::empty({q.out_features, q.in_features}, DType::int8);
  q.scales = Tensor::empty({q.out_features}, DType::f32);
  if (skip_compute(source)) {
    return q;
  }

  float* scales = q.scales.data_as<float>();
  auto* values = q.values.data_as<std::int8_t>();
  for_each_row(source, q.format, [&](std::int64_t n, const float* row) {
    const float scale = scale_for(max_abs(row, q.in_features), kInt8Max);
    scales[n] = scale;
    std::int8_t* out = values + n * q.in_features;
    for (std::int64_t k = 0; k < q.in_features; ++k) {
      const float rounded = std::nearbyint(row[k] / scale);
      out[k] = static_cast<std::int8_t>(std::clamp(rounded, -kInt8Max, kInt8Max));
    }
  });
  return q;
}

QuantizedWeight quantize_nf4(const Tensor& weight) {
  const Tensor source = contiguous_weight(weight, QuantFormat::nf4);
  QuantizedWeight q = empty_weight(QuantFormat::nf4, source);
  const std::int64_t blocks = q.nf4_block_count();
  const std::int64_t groups = (blocks + kNf4AbsmaxGroupSize - 1) / kNf4AbsmaxGroupSize;
  q.values = Tensor::empty({q.out_features, q.in_features}, DType::packed4);
  q.nf4.absmax_codes = Tensor::empty({blocks}, DType::uint8);
  q.nf4.group_scales = Tensor::empty({groups}, DType::f32);
  q.nf4.code_map = Tensor::empty({256}, DType::f32);
  const Tensor absmax = Tensor::empty({blocks}, DType::f32);
  if (skip_compute(source)) {
    return q;
  }

  compute_block_absmax(source, blocks, absmax.data_as<float>());
  quantize_block_absmax(absmax.data_as<float>(), blocks, q.nf4);
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
