#include "models/qwen_image/vae_weights.h"

#include <cmath>
#include <string_view>

#include <fmt/format.h>

#include "runtime/allocator.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace ethereal {

namespace {

std::uint64_t splitmix64(std::uint64_t value) {
  value += 0x9e3779b97f4a7c15ull;
  value = (value ^ (value >> 30)) * 0xbf58476d1ce4e5b9ull;
  value = (value ^ (value >> 27)) * 0x94d049bb133111ebull;
  return value ^ (value >> 31);
}

// FNV-1a, so that a tensor's random values depend on its name and not on the load order.
std::uint64_t hash_name(std::string_view name) {
  std::uint64_t hash = 0xcbf29ce484222325ull;
  for (char c : name) {
    hash = (hash ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  }
  return hash;
}

// Fills `t` (contiguous f32 or bf16) with offset + half_width * u, u uniform in [-1, 1).
void fill_uniform(Tensor& t, std::uint64_t stream, float offset, float half_width) {
  const bool bf16 = t.dtype() == DType::bf16;
  if (!bf16 && t.dtype() != DType::f32) {
    throw Error(fmt::format("RandomVaeWeights: dtype {} is not supported; use f32 or bf16",
                            dtype_name(t.dtype())));
  }
  void* data = t.data();
  parallel_for(0, t.numel(), 1 << 16, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      const std::uint64_t bits = splitmix64(stream ^ static_cast<std::uint64_t>(i) * 0x2545f491ull);
      const float u = static_cast<float>(bits >> 40) * (1.0f / 8388608.0f) - 1.0f;
      const float value = offset + half_width * u;
      if (bf16) {
        static_cast<std::uint16_t*>(data)[i] = f32_to_bf16(value);
      } else {
        static_cast<float*>(data)[i] = value;
      }
    }
  });
}

bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

}  // namespace

Tensor CheckpointVaeWeights::take(const std::string& name, const Shape& shape, DType dtype) {
  return loader_.take(name, shape, dtype);
}

void CheckpointVaeWeights::skip(const std::string& name, const Shape& shape) {
  if (!loader_.contains(name)) {
    return;
  }
  const TensorInfo& stored = loader_.info(name);
  if (stored.shape != shape) {
    throw InvalidInputError(fmt::format(
        "{}: the {} tensor \"{}\" has shape {} but the configuration expects {}; check that the "
        "config file matches the weights",
        loader_.checkpoint().path().string(), loader_.component(), name, shape_str(stored.shape),
        shape_str(shape)));
  }
  loader_.ignore_prefix(name);
}

Tensor RandomVaeWeights::take(const std::string& name, const Shape& shape, DType dtype) {
  Tensor result = Tensor::empty(shape, dtype);
  if (result.is_dry() || result.numel() == 0) {
    return result;
  }
  const std::uint64_t stream = splitmix64(seed_ ^ hash_name(name));
  if (ends_with(name, ".gamma")) {
    fill_uniform(result, stream, 1.0f, 0.1f);
  } else if (ends_with(name, ".bias")) {
    fill_uniform(result, stream, 0.0f, 0.05f);
  } else {
    const std::int64_t fan_in = result.numel() / shape.front();
    // Uniform in [-a, a] has variance a^2 / 3.
    fill_uniform(result, stream, 0.0f, std::sqrt(3.0f / static_cast<float>(fan_in)));
  }
  return result;
}

cpu::Conv2d VaeLayerFactory::causal_conv(const std::string& prefix, std::int64_t out_channels,
                                         std::int64_t in_channels, std::int64_t kernel,
                                         std::int64_t kept_out_channels) {
  const Tensor weight =
      source_.take(prefix + ".weight", {out_channels, in_channels, kernel, kernel, kernel},
                   precision_.weight_dtype);
  Tensor bias = source_.take(prefix + ".bias", {out_channels}, DType::f32);
  // [out, in, k, k, k] -> [out, in, k, k]: the last temporal slice, a strided view that the
  // convolution packs directly (nothing is read in a dry run).
  Tensor slice = weight.select(2, kernel - 1);
  if (kept_out_channels > 0) {
    slice = slice.narrow(0, 0, kept_out_channels);
    bias = bias.narrow(0, 0, kept_out_channels);
  }
  cpu::Conv2dOptions options;
  options.padding = cpu::Padding2d::symmetric(kernel / 2);
  return cpu::Conv2d(slice, bias, options);
}

cpu::Conv2d VaeLayerFactory::conv2d(const std::string& prefix, std::int64_t out_channels,
                                    std::int64_t in_channels, std::int64_t kernel,
                                    cpu::Conv2dOptions options) {
  const Tensor weight = source_.take(
      prefix + ".weight", {out_channels, in_channels, kernel, kernel}, precision_.weight_dtype);
  const Tensor bias = source_.take(prefix + ".bias", {out_channels}, DType::f32);
  return cpu::Conv2d(weight, bias, options);
}

cpu::PackedLinear VaeLayerFactory::pointwise(const std::string& prefix, std::int64_t out_channels,
                                             std::int64_t in_channels) {
  const Tensor weight =
      source_.take(prefix + ".weight", {out_channels, in_channels, 1, 1}, precision_.weight_dtype);
  const Tensor bias = source_.take(prefix + ".bias", {out_channels}, DType::f32);
  return cpu::PackedLinear(weight.view({out_channels, in_channels}), bias, precision_.weight_dtype);
}

Tensor VaeLayerFactory::gamma(const std::string& prefix, std::int64_t channels,
                              std::int64_t unit_axes) {
  Shape shape = {channels};
  shape.insert(shape.end(), static_cast<std::size_t>(unit_axes), 1);
  return source_.take(prefix + ".gamma", shape, precision_.weight_dtype).view({channels});
}

void VaeLayerFactory::skip_time_conv(const std::string& prefix, std::int64_t out_channels,
                                     std::int64_t in_channels) {
  source_.skip(prefix + ".weight", {out_channels, in_channels, 3, 1, 1});
  source_.skip(prefix + ".bias", {out_channels});
}

}  // namespace ethereal
