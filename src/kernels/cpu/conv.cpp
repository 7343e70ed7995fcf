#include "kernels/cpu/conv.h"

#include <fmt/format.h>

#include <algorithm>

#include "kernels/cpu/onednn.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace ethereal::cpu {

namespace {

constexpr std::string_view kKernel = "conv2d";
// Height and width of the representative input the weights are packed for (see conv.h).
constexpr std::int64_t kPackingSize = 256;

using DataType = dnnl::memory::data_type;
using FormatTag = dnnl::memory::format_tag;

void check_dtype(DType dtype, std::string_view what) {
  if (dtype != DType::f32 && dtype != DType::bf16) {
    throw Error(
        fmt::format("conv2d: {} dtype is {}; expected f32 or bf16", what, dtype_name(dtype)));
  }
}

}  // namespace

struct Conv2d::Primitives {
  dnnl::memory::desc packed_desc;
  PrimitiveCache<dnnl::convolution_forward> cache;
};

namespace {

struct ConvProblem {
  std::int64_t batch, in_channels, height, width;
  std::int64_t out_channels, kernel_height, kernel_width;
  Conv2dOptions options;
  DType compute, dst;
  bool has_bias;
};

dnnl::convolution_forward::primitive_desc make_conv_pd(const ConvProblem& p,
                                                       const dnnl::memory::desc& weights) {
  const Padding2d& pad = p.options.padding;
  const std::int64_t out_height =
      (p.height + pad.top + pad.bottom - p.kernel_height) / p.options.stride + 1;
  const std::int64_t out_width =
      (p.width + pad.left + pad.right - p.kernel_width) / p.options.stride + 1;
  const DataType compute = onednn_data_type(p.compute, kKernel);
  const dnnl::memory::desc src({p.batch, p.in_channels, p.height, p.width}, compute,
                               FormatTag::any);
  const dnnl::memory::desc dst({p.batch, p.out_channels, out_height, out_width},
                               onednn_data_type(p.dst, kKernel), FormatTag::any);
  const dnnl::memory::desc bias({p.out_channels}, DataType::f32, FormatTag::a);
  const dnnl::memory::dims strides = {p.options.stride, p.options.stride};
  const dnnl::memory::dims padding_begin = {pad.top, pad.left};
  const dnnl::memory::dims padding_end = {pad.bottom, pad.right};
  const auto kind = dnnl::prop_kind::forward_inference;
  const auto algorithm = dnnl::algorithm::convolution_direct;
  const dnnl::convolution_forward::desc desc =
      p.has_bias ? dnnl::convolution_forward::desc(kind, algorithm, src, weights, bias, dst,
                                                   strides, padding_begin, padding_end)
                 : dnnl::convolution_forward::desc(kind, algorithm, src, weights, dst, strides,
                                                   padding_begin, padding_end);
  return dnnl::convolution_forward::primitive_desc(desc, onednn_attr(), onednn_engine(), true);
}

// Creates the convolution primitive descriptor for problem `p`. It reads the packed weights
// directly when oneDNN's preferred kernel for this shape takes their layout. Otherwise the
// descriptor wants another layout and forward() reorders the packed weights on each call.
dnnl::convolution_forward::primitive_desc make_conv_pd_for(const ConvProblem& p,
                                                           const dnnl::memory::desc& packed) {
  const auto preferred = make_conv_pd(
      p, dnnl::memory::desc({p.out_channels, p.in_channels, p.kernel_height, p.kernel_width},
                            onednn_data_type(p.compute, kKernel), FormatTag::any));
  if (!preferred) {
    throw Error(
        fmt::format("conv2d: oneDNN has no convolution for input [{}, {}, {}, {}] with "
                    "weight [{}, {}, {}, {}] in {}",
                    p.batch, p.in_channels, p.height, p.width, p.out_channels, p.in_channels,
                    p.kernel_height, p.kernel_width, dtype_name(p.compute)));
  }
  if (preferred.weights_desc() == packed) {
    return preferred;
  }
  // oneDNN accepts a fixed weight layout its fast kernel cannot read by choosing its reference
  // kernel, so the fixed layout is used only when the same kernel takes it.
  const auto fixed = make_conv_pd(p, packed);
  if (fixed && std::string_view(fixed.impl_info_str()) == preferred.impl_info_str()) {
    return fixed;
  }
  return preferred;
}

}  // namespace

Conv2d::Conv2d(const Tensor& weight, const Tensor& bias, Conv2dOptions options)
    : options_(options) {
  if (!weight.defined() || weight.dim() != 4) {
    throw Error(
        fmt::format("conv2d: weight must be a 4-D tensor [out_channels, in_channels, "
                    "kernel_height, kernel_width]; got {}",
                    weight.defined() ? weight.describe() : "an undefined tensor"));
  }
  check_dtype(weight.dtype(), "weight");
  out_channels_ = weight.size(0);
  in_channels_ = weight.size(1);
  kernel_height_ = weight.size(2);
  kernel_width_ = weight.size(3);
  packed_dtype_ = options.packed_dtype.value_or(weight.dtype());
  check_dtype(packed_dtype_, "packed weight");
  if (weight.numel() == 0) {
    throw Error(fmt::format("conv2d: weight {} is empty; every dimension must be positive",
                            weight.describe()));
  }
  const Padding2d& pad = options.padding;
  if (options.stride < 1 || pad.left < 0 || pad.right < 0 || pad.top < 0 || pad.bottom < 0) {
    throw Error(
        fmt::format("conv2d: stride {} and padding (left {}, right {}, top {}, bottom {}) "
                    "are invalid; expected stride >= 1 and padding >= 0",
                    options.stride, pad.left, pad.right, pad.top, pad.bottom));
  }
  if (bias.defined()) {
    if (bias.dim() != 1 || bias.size(0) != out_channels_) {
      throw Error(fmt::format("conv2d: bias {} does not match out_channels {}; expected [{}]",
                              bias.describe(), out_channels_, out_channels_));
    }
    check_dtype(bias.dtype(), "bias");
    bias_ = onednn_contiguous(bias, DType::f32, kKernel);
  }

  // Ask oneDNN for its preferred weight layout for a representative input.
  const std::int64_t size = std::max({kPackingSize, kernel_height_, kernel_width_});
  const ConvProblem problem{1,
                            in_channels_,
                            size,
                            size,
                            out_channels_,
                            kernel_height_,
                            kernel_width_,
                            options_,
                            packed_dtype_,
                            packed_dtype_,
                            bias.defined()};
  const auto pd = make_conv_pd(
      problem, dnnl::memory::desc({out_channels_, in_channels_, kernel_height_, kernel_width_},
                                  onednn_data_type(packed_dtype_, kKernel), FormatTag::any));
  if (!pd) {
    throw Error(fmt::format("conv2d: oneDNN has no convolution for weight {}", weight.describe()));
  }
  primitives_ = std::make_shared<Primitives>();
  primitives_->packed_desc = pd.weights_desc();
  packed_ = empty_for_desc(primitives_->packed_desc);
  const bool execute = !weight.is_dry() && !packed_.is_dry();
  onednn_reorder(onednn_plain_desc(weight, kKernel), weight, primitives_->packed_desc, packed_,
                 execute);
}

Shape Conv2d::output_shape(const Shape& input) const {
  const Padding2d& pad = options_.padding;
  if (input.size() != 4 || input[1] != in_channels_ ||
      input[2] + pad.top + pad.bottom < kernel_height_ ||
      input[3] + pad.left + pad.right < kernel_width_) {
    throw Error(
        fmt::format("conv2d: input shape {} is invalid; expected [N, {}, H, W] with "
                    "H + {} >= {} and W + {} >= {}",
                    shape_str(input), in_channels_, pad.top + pad.bottom, kernel_height_,
                    pad.left + pad.right, kernel_width_));
  }
  const std::int64_t stride = options_.stride;
  return {input[0], out_channels_, (input[2] + pad.top + pad.bottom - kernel_height_) / stride + 1,
          (input[3] + pad.left + pad.right - kernel_width_) / stride + 1};
}

Tensor Conv2d::forward(const Tensor& x) const {
  if (!x.defined()) {
    throw Error("conv2d: input is an undefined tensor");
  }
  check_dtype(x.dtype(), "input");
  Tensor out = Tensor::empty(output_shape(x.shape()), x.dtype());
  if (out.numel() == 0) {
    return out;
  }
  const bool execute = !dry_run_active() && !x.is_dry() && !out.is_dry() && !packed_.is_dry();

  // The bf16 kernels write f32 or bf16; the f32 kernels write f32, converted afterwards.
  const DType dst_dtype = packed_dtype_ == DType::bf16 ? x.dtype() : DType::f32;
  const ConvProblem problem{x.size(0),     x.size(1),      x.size(2),      x.size(3),
                            out_channels_, kernel_height_, kernel_width_,  options_,
                            packed_dtype_, dst_dtype,      bias_.defined()};
  const std::string key = fmt::format("{}x{}x{}:{}:{}", x.size(0), x.size(2), x.size(3),
                                      dtype_name(dst_dtype), thread_count());
  const auto entry = primitives_->cache.get(
      key, [&] { return make_conv_pd_for(problem, primitives_->packed_desc); });
  const auto& pd = entry->pd;

  // Input: NCHW (any strides, any dtype) -> the primitive's layout and dtype (NHWC here).
  Tensor src = x;
  const dnnl::memory::desc x_desc = onednn_plain_desc(x, kKernel);
  if (pd.src_desc() != x_desc) {
    src = empty_for_desc(pd.src_desc());
    onednn_reorder(x_desc, x, pd.src_desc(), src, execute);
  }
  Tensor weights = packed_;
  if (pd.weights_desc() != primitives_->packed_desc) {
    weights = empty_for_desc(pd.weights_desc());
    onednn_reorder(primitives_->packed_desc, packed_, pd.weights_desc(), weights, execute);
  }
  const dnnl::memory::desc out_desc = onednn_plain_desc(out, kKernel);
  const Tensor dst = pd.dst_desc() == out_desc ? out : empty_for_desc(pd.dst_desc());
  const Tensor scratchpad = empty_scratchpad(pd);

  if (execute) {
    std::unordered_map<int, dnnl::memory> arguments = {
        {DNNL_ARG_SRC, onednn_memory(pd.src_desc(), src)},
        {DNNL_ARG_WEIGHTS, onednn_memory(pd.weights_desc(), weights)},
        {DNNL_ARG_DST, onednn_memory(pd.dst_desc(), dst)}};
    if (bias_.defined()) {
      arguments.emplace(DNNL_ARG_BIAS, onednn_memory(bias_, kKernel));
    }
    onednn_execute(entry->primitive, std::move(arguments), scratchpad);
  }
  // Output: the primitive's layout -> NCHW in x's dtype.
  if (dst.storage() != out.storage()) {
    onednn_reorder(pd.dst_desc(), dst, out_desc, out, execute);
  }
  return out;
}

std::string Conv2d::packed_format() const {
  return onednn_layout_name(primitives_->packed_desc);
}

std::string Conv2d::implementation(const Shape& input, DType x_dtype) const {
  output_shape(input);
  const DType dst_dtype = packed_dtype_ == DType::bf16 ? x_dtype : DType::f32;
  const ConvProblem problem{input[0],      input[1],       input[2],       input[3],
                            out_channels_, kernel_height_, kernel_width_,  options_,
                            packed_dtype_, dst_dtype,      bias_.defined()};
  return make_conv_pd_for(problem, primitives_->packed_desc).impl_info_str();
}

}  // namespace ethereal::cpu
