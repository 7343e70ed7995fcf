// 2-D convolution (cross-correlation, as in PyTorch's Conv2d) on oneDNN with the weights
// packed once.
//
// Layout: the API takes and returns NCHW tensors. oneDNN 2.6's fast kernels on this machine
// (brgconv, avx512_core and avx512_core_bf16) work on NHWC activations, so each forward() makes
// an NHWC copy of the input and writes the result through an NHWC temporary that is reordered
// back to NCHW. Both copies come from the current allocator and cost memory bandwidth: about
// two extra reads and writes of the input and the output per call.
//
// Weights: the constructor packs them in the layout oneDNN prefers for a representative
// 256x256 input. That layout depends on the channel counts, the dtype and also the spatial
// size: with oneDNN 2.6.3 on Zen 4, bf16 3x3 convolutions with 192 channels block output
// channels by 64 at 64x64 and 128x128 but by 48 at 32x32 and from 256x256 up. For an input
// whose preferred kernel does not read the packed layout, forward() reorders the packed
// weights into the preferred one on every call. A fixed layout must not be forced on oneDNN,
// because it silently falls back to its reference kernel: 0.07 against 235 GFLOP per CPU
// second measured for bf16 with 192 channels at 32x32. The reorder reads the weights once
// per call while the convolution reads each weight once per output pixel, so it costs little
// next to the convolution itself.
//
// Precision: the compute dtype is the packed dtype, by default the weight's. Inputs of another
// dtype are converted to it. Accumulation is f32, the bias (kept as f32) is added in the
// primitive, and the output has the input's dtype.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "runtime/tensor.h"

namespace ethereal::cpu {

// Zero padding in pixels on each side, possibly asymmetric. PyTorch's ZeroPad2d(0, 1, 0, 1)
// followed by an unpadded convolution is {.left = 0, .right = 1, .top = 0, .bottom = 1}.
struct Padding2d {
  std::int64_t left = 0;
  std::int64_t right = 0;
  std::int64_t top = 0;
  std::int64_t bottom = 0;

  static Padding2d symmetric(std::int64_t pixels) { return {pixels, pixels, pixels, pixels}; }
};

struct Conv2dOptions {
  std::int64_t stride = 1;  // the same along height and width
  Padding2d padding;
  // Dtype the weights are packed in (f32 or bf16), by default the weight's.
  std::optional<DType> packed_dtype;
};

class Conv2d {
 public:
  // Packs weight [out_channels, in_channels, kernel_height, kernel_width] (f32 or bf16, any
  // strides) and keeps the optional bias [out_channels] (f32 or bf16) as f32. In a dry run, or when
  // `weight` is dry, the packed weights are allocated with their real size and left unfilled.
  Conv2d(const Tensor& weight, const Tensor& bias, Conv2dOptions options = {});

  // x [N, in_channels, H, W] f32 or bf16, any strides -> [N, out_channels, H', W'] in x's
  // dtype, where H' = (H + top + bottom - kernel_height) / stride + 1 and likewise W'.
  Tensor forward(const Tensor& x) const;

  // Returns the output shape for an input of shape `input`. Throws for an invalid input shape.
  Shape output_shape(const Shape& input) const;

  std::int64_t in_channels() const { return in_channels_; }
  std::int64_t out_channels() const { return out_channels_; }
  std::int64_t kernel_height() const { return kernel_height_; }
  std::int64_t kernel_width() const { return kernel_width_; }
  const Conv2dOptions& options() const { return options_; }
  DType packed_dtype() const { return packed_dtype_; }
  // The packed weights: uint8 bytes in the layout named by packed_format().
  const Tensor& packed_weight() const { return packed_; }
  // oneDNN tag spelling of the packed layout, e.g. "AcdB48a2b" (a: out channels, b: in
  // channels).
  std::string packed_format() const;

  // Name of the oneDNN implementation forward() runs for inputs of shape `input` and dtype
  // `x_dtype`, e.g. "brgconv:avx512_core_bf16".
  std::string implementation(const Shape& input, DType x_dtype) const;

  struct Primitives;  // cached oneDNN objects, defined in conv.cpp

 private:
  std::int64_t out_channels_ = 0;
  std::int64_t in_channels_ = 0;
  std::int64_t kernel_height_ = 0;
  std::int64_t kernel_width_ = 0;
  Conv2dOptions options_;
  DType packed_dtype_ = DType::f32;
  Tensor packed_;
  Tensor bias_;
  std::shared_ptr<Primitives> primitives_;
};

}  // namespace ethereal::cpu
