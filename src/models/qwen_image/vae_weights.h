// Where the VAE's weights come from, and how its layers are built from them.
//
// The model requests each tensor from a VaeWeightSource by canonical (diffusers) name and shape.
// CheckpointVaeWeights reads a checkpoint through the WeightLoader; RandomVaeWeights makes
// seeded random tensors for benchmarks and tests that need the real layer sizes without a
// file.
//
// Single-frame semantics: the checkpoint stores the encoder and decoder convolutions as
// causal 3-D convolutions [out, in, t, k, k]. For one frame the causal padding puts two zero
// frames in front, so a temporal kernel of 3 only ever meets the input with its last slice
// (t = 2), and VaeLayerFactory builds 2-D convolutions from W[:, :, t - 1]. The 3-D
// resamplers' time_conv weights act only between frames; they are checked but never loaded.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/cpu/conv.h"
#include "kernels/cpu/linear.h"
#include "models/model_precision.h"
#include "models/weight_loader.h"
#include "runtime/tensor.h"

namespace ethereal {

class VaeWeightSource {
 public:
  virtual ~VaeWeightSource() = default;
  // The tensor `name` with shape `shape`, converted to `dtype`.
  virtual Tensor take(const std::string& name, const Shape& shape, DType dtype) = 0;
  // Declares `name` (shape `shape`) present but unused: its shape is checked when the source
  // has it; nothing is loaded. A missing tensor is accepted.
  virtual void skip(const std::string& name, const Shape& shape) = 0;
};

class CheckpointVaeWeights final : public VaeWeightSource {
 public:
  explicit CheckpointVaeWeights(WeightLoader& loader) : loader_(loader) {}

  Tensor take(const std::string& name, const Shape& shape, DType dtype) override;
  void skip(const std::string& name, const Shape& shape) override;

 private:
  WeightLoader& loader_;
};

// Seeded random weights with the scales of a trained network's initialisation: conv and linear
// weights uniform with variance 1 / fan_in, biases uniform in [-0.05, 0.05], norm gammas
// uniform in [0.9, 1.1]. Each tensor's values depend only on the seed and its name. In a dry
// run the tensors are allocated and left unfilled.
class RandomVaeWeights final : public VaeWeightSource {
 public:
  explicit RandomVaeWeights(std::uint64_t seed) : seed_(seed) {}

  Tensor take(const std::string& name, const Shape& shape, DType dtype) override;
  void skip(const std::string&, const Shape&) override {}

 private:
  std::uint64_t seed_;
};

// Builds the VAE's layers from canonical tensors. Weights are kept (packed) in
// precision.weight_dtype, which is also the dtype the convolutions compute in; biases are f32.
class VaeLayerFactory {
 public:
  VaeLayerFactory(VaeWeightSource& source, ModelPrecision precision)
      : source_(source), precision_(precision) {}

  // A causal 3-D convolution "<prefix>.weight" [out, in, k, k, k] (+ bias [out]) with k = 1 or
  // 3, as the 2-D convolution that it is for a single frame: kernel W[:, :, k - 1], zero
  // padding k / 2 on every side. With `kept_out_channels` > 0 only the first that many output
  // channels are built (the rest are read and dropped).
  cpu::Conv2d causal_conv(const std::string& prefix, std::int64_t out_channels,
                          std::int64_t in_channels, std::int64_t kernel,
                          std::int64_t kept_out_channels = 0);
  // A 2-D convolution "<prefix>.weight" [out, in, k, k] (+ bias [out]).
  cpu::Conv2d conv2d(const std::string& prefix, std::int64_t out_channels, std::int64_t in_channels,
                     std::int64_t kernel, cpu::Conv2dOptions options);
  // A 1x1 2-D convolution "<prefix>.weight" [out, in, 1, 1] (+ bias) as a linear layer for
  // channel-last rows.
  cpu::PackedLinear pointwise(const std::string& prefix, std::int64_t out_channels,
                              std::int64_t in_channels);
  // An RMS_norm scale "<prefix>.gamma" of `channels` values stored as [channels, 1, ..., 1]
  // with `unit_axes` trailing ones, returned flat [channels].
  Tensor gamma(const std::string& prefix, std::int64_t channels, std::int64_t unit_axes);
  // Checks the shapes of an unused temporal convolution "<prefix>" ([out, in, 3, 1, 1] + bias).
  void skip_time_conv(const std::string& prefix, std::int64_t out_channels,
                      std::int64_t in_channels);

  VaeWeightSource& source() { return source_; }
  const ModelPrecision& precision() const { return precision_; }

 private:
  VaeWeightSource& source_;
  ModelPrecision precision_;
};

}  // namespace ethereal
