#include "quant/panel_matmul.h"

#include <fmt/format.h>

#include "kernels/cpu/onednn.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace ethereal::quant::detail {

namespace {

constexpr std::string_view kKernel = "quantized linear";

using DataType = dnnl::memory::data_type;
using FormatTag = dnnl::memory::format_tag;

// The same description cpu::PackedLinear gives its own packed weights.
cpu::PackedLayout describe_layout(const dnnl::memory::desc& desc) {
  const dnnl_memory_desc_t& data = desc.data;
  if (data.format_kind != dnnl_blocked || data.ndims != 2) {
    throw Error("quantized linear: oneDNN chose a packed weight layout that is not 2-D blocked");
  }
  const dnnl_blocking_desc_t& blocking = data.format_desc.blocking;
  cpu::PackedLayout layout;
  layout.k = data.dims[0];
  layout.n = data.dims[1];
  layout.dtype = DType::bf16;
  layout.padded_k = data.padded_dims[0];
  layout.padded_n = data.padded_dims[1];
  layout.outer_stride_k = blocking.strides[0];
  layout.outer_stride_n = blocking.strides[1];
  for (int i = 0; i < blocking.inner_nblks; ++i) {
    layout.inner_blocks.push_back(
        {static_cast<int>(blocking.inner_idxs[i]), blocking.inner_blks[i]});
  }
  layout.format = cpu::onednn_layout_name(desc);
  layout.bytes = desc.get_size();
  return layout;
}

dnnl::matmul::primitive_desc make_pd(std::int64_t rows, std::int64_t k, std::int64_t width,
                                     const dnnl::memory::desc& weights, bool has_bias,
                                     DType dst_dtype, bool allow_empty) {
  const dnnl::memory::desc src({rows, k}, DataType::bf16, FormatTag::ab);
  const dnnl::memory::desc dst({rows, width}, cpu::onednn_data_type(dst_dtype, kKernel),
                               FormatTag::ab);
  const dnnl::memory::desc bias({1, width}, DataType::f32, FormatTag::ab);
  const dnnl::matmul::desc desc = has_bias ? dnnl::matmul::desc(src, weights, bias, dst)
                                           : dnnl::matmul::desc(src, weights, dst);
  return dnnl::matmul::primitive_desc(desc, cpu::onednn_attr(), cpu::onednn_engine(), allow_empty);
}

}  // namespace

struct PanelMatmul::Primitives {
  dnnl::memory::desc packed_desc;
  cpu::PrimitiveCache<dnnl::matmul> cache;
};

namespace {

// Returns the matmul for `rows` rows on the packed layout when oneDNN accepts it. Otherwise the
// matmul uses the layout oneDNN requests, and run() reorders the panel on every call.
std::shared_ptr<const cpu::PrimitiveCache<dnnl::matmul>::Entry> primitive_for(
    PanelMatmul::Primitives& primitives, std::int64_t rows, std::int64_t k, std::int64_t width,
    bool has_bias, DType dst_dtype) {
  const std::string key = fmt::format("{}:{}:{}", rows, dtype_name(dst_dtype), thread_count());
  return primitives.cache.get(key, [&] {
    dnnl::matmul::primitive_desc pd =
        make_pd(rows, k, width, primitives.packed_desc, has_bias, dst_dtype, true);
    if (!pd) {
      const dnnl::memory::desc any({k, width}, DataType::bf16, FormatTag::any);
      pd = make_pd(rows, k, width, any, has_bias, dst_dtype, false);
    }
    return pd;
  });
}

}  // namespace

PanelMatmul::PanelMatmul(std::int64_t k, std::int64_t width, bool has_bias)
    : k_(k), width_(width), has_bias_(has_bias), primitives_(std::make_shared<Primitives>()) {
  // The layout oneDNN picks does not depend on the row count (see kernels/cpu/linear.h), so
  // the panel is packed for PackedLinear's representative row count.
  const dnnl::memory::desc any({k, width}, DataType::bf16, FormatTag::any);
  const auto pd =
      make_pd(cpu::PackedLinear::kPackingRows, k, width, any, has_bias, DType::bf16, false);
  primitives_->packed_desc = pd.weights_desc();
  layout_ = describe_layout(primitives_->packed_desc);
}

std::size_t PanelMatmul::scratchpad_bytes(std::int64_t rows, DType dst_dtype) const {
  const auto entry = primitive_for(*primitives_, rows, k_, width_, has_bias_, dst_dtype);
  return entry->pd.scratchpad_desc().get_size();
}

void PanelMatmul::run(const Tensor& src, const Tensor& packed, const Tensor& bias,
                      const Tensor& dst, const Tensor& scratchpad, bool execute) const {
  const std::int64_t rows = src.size(0);
  const auto entry = primitive_for(*primitives_, rows, k_, width_, has_bias_, dst.dtype());
  const dnnl::memory::desc weights_desc = entry->pd.weights_desc();
  Tensor weights = packed;
  if (weights_desc != primitives_->packed_desc) {
    weights = cpu::empty_for_desc(weights_desc);
    cpu::onednn_reorder(primitives_->packed_desc, packed, weights_desc, weights, execute);
  }
  if (!execute) {
    return;
  }
  std::unordered_map<int, dnnl::memory> arguments = {
      {DNNL_ARG_SRC, cpu::onednn_memory(src, kKernel)},
      {DNNL_ARG_WEIGHTS, cpu::onednn_memory(weights_desc, weights)},
      {DNNL_ARG_DST, cpu::onednn_memory(dst, kKernel)}};
  if (has_bias_) {
    arguments.emplace(DNNL_ARG_BIAS, cpu::onednn_memory(bias, kKernel));
  }
  cpu::onednn_execute(entry->primitive, std::move(arguments), scratchpad);
}

}  // namespace ethereal::quant::detail
