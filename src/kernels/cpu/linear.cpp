#include "kernels/cpu/linear.h"

#include <fmt/format.h>

#include <cstring>

#include "kernels/cpu/onednn.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace ethereal::cpu {

namespace {

constexpr std::string_view kKernel = "linear";

using DataType = dnnl::memory::data_type;
using FormatTag = dnnl::memory::format_tag;

void check_compute_dtype(DType dtype, std::string_view what) {
  if (dtype != DType::f32 && dtype != DType::bf16) {
    throw Error(
        fmt::format("linear: {} dtype is {}; expected f32 or bf16", what, dtype_name(dtype)));
  }
}

const Tensor& check_weight(const Tensor& weight) {
  if (!weight.defined() || weight.dim() != 2) {
    throw Error(
        fmt::format("linear: weight must be a 2-D tensor [out_features, in_features]; "
                    "got {}",
                    weight.defined() ? weight.describe() : "an undefined tensor"));
  }
  check_compute_dtype(weight.dtype(), "weight");
  return weight;
}

// Creates the matmul primitive descriptor for `rows` x K activations. It reads the packed
// weights directly when oneDNN's preferred kernel for this shape takes their layout. Otherwise
// the descriptor wants another layout and forward() reorders the packed weights on each call.
dnnl::matmul::primitive_desc make_matmul_pd(std::int64_t rows, const PackedLayout& layout,
                                            const dnnl::memory::desc& packed_desc, bool has_bias,
                                            DType dst_dtype) {
  const DataType compute = onednn_data_type(layout.dtype, kKernel);
  const dnnl::memory::desc src({rows, layout.k}, compute, FormatTag::ab);
  const dnnl::memory::desc dst({rows, layout.n}, onednn_data_type(dst_dtype, kKernel),
                               FormatTag::ab);
  const dnnl::memory::desc bias({1, layout.n}, DataType::f32, FormatTag::ab);
  auto make = [&](const dnnl::memory::desc& weights) {
    const dnnl::matmul::desc desc = has_bias ? dnnl::matmul::desc(src, weights, bias, dst)
                                             : dnnl::matmul::desc(src, weights, dst);
    return dnnl::matmul::primitive_desc(desc, onednn_attr(), onednn_engine(), true);
  };
  const dnnl::matmul::primitive_desc preferred =
      make(dnnl::memory::desc({layout.k, layout.n}, compute, FormatTag::any));
  if (!preferred) {
    throw Error(fmt::format("linear: oneDNN has no matmul for {} x {} by {} x {} in {}", rows,
                            layout.k, layout.k, layout.n, dtype_name(layout.dtype)));
  }
  if (preferred.weights_desc() == packed_desc) {
    return preferred;
  }
  // oneDNN accepts a fixed weight layout its fast kernel cannot read by choosing its reference
  // kernel, so the fixed layout is used only when the same kernel takes it.
  const dnnl::matmul::primitive_desc fixed = make(packed_desc);
  if (fixed && std::string_view(fixed.impl_info_str()) == preferred.impl_info_str()) {
    return fixed;
  }
  return preferred;
}

template <typename Element>
void scatter_row(const Element* row, const std::vector<std::int64_t>& k_offsets, std::int64_t base,
                 Element* packed) {
  for (std::size_t k = 0; k < k_offsets.size(); ++k) {
    packed[base + k_offsets[k]] = row[k];
  }
}

PackedLayout describe_layout(const dnnl::memory::desc& desc, DType dtype) {
  const dnnl_memory_desc_t& data = desc.data;
  if (data.format_kind != dnnl_blocked || data.ndims != 2) {
    throw Error("linear: oneDNN chose a packed weight layout that is not a 2-D blocked layout");
  }
  const dnnl_blocking_desc_t& blocking = data.format_desc.blocking;
  PackedLayout layout;
  layout.k = data.dims[0];
  layout.n = data.dims[1];
  layout.dtype = dtype;
  layout.padded_k = data.padded_dims[0];
  layout.padded_n = data.padded_dims[1];
  layout.outer_stride_k = blocking.strides[0];
  layout.outer_stride_n = blocking.strides[1];
  for (int i = 0; i < blocking.inner_nblks; ++i) {
    layout.inner_blocks.push_back(
        {static_cast<int>(blocking.inner_idxs[i]), blocking.inner_blks[i]});
  }
  layout.format = onednn_layout_name(desc);
  layout.bytes = desc.get_size();
  return layout;
}

}  // namespace

// PackedLayout.

namespace {

std::int64_t axis_offset(const PackedLayout& layout, int axis, std::int64_t index) {
  std::int64_t block_total = 1;
  for (const auto& block : layout.inner_blocks) {
    if (block.axis == axis) {
      block_total *= block.size;
    }
  }
  const std::int64_t outer_stride = axis == 0 ? layout.outer_stride_k : layout.outer_stride_n;
  std::int64_t offset = (index / block_total) * outer_stride;
  // Inner blocks from innermost outwards: each takes the next digits of this axis's index
  // within its block and is weighted by the sizes of all blocks inside it.
  std::int64_t remainder = index % block_total;
  std::int64_t multiplier = 1;
  for (auto block = layout.inner_blocks.rbegin(); block != layout.inner_blocks.rend(); ++block) {
    if (block->axis == axis) {
      offset += (remainder % block->size) * multiplier;
      remainder /= block->size;
    }
    multiplier *= block->size;
  }
  return offset;
}

}  // namespace

std::int64_t PackedLayout::k_offset(std::int64_t k_index) const {
  return axis_offset(*this, 0, k_index);
}

std::int64_t PackedLayout::n_offset(std::int64_t n_index) const {
  return axis_offset(*this, 1, n_index);
}

std::int64_t PackedLayout::element_offset(std::int64_t k_index, std::int64_t n_index) const {
  return k_offset(k_index) + n_offset(n_index);
}

// PackedLinear.

struct PackedLinear::Primitives {
  dnnl::memory::desc packed_desc;
  PrimitiveCache<dnnl::matmul> cache;

  std::shared_ptr<const PrimitiveCache<dnnl::matmul>::Entry> get(const PackedLayout& layout,
                                                                 std::int64_t rows, bool has_bias,
                                                                 DType dst_dtype) {
    const std::string key = fmt::format("{}:{}:{}", rows, dtype_name(dst_dtype), thread_count());
    return cache.get(
        key, [&] { return make_matmul_pd(rows, layout, packed_desc, has_bias, dst_dtype); });
  }
};

PackedLinear::PackedLinear(std::int64_t out_features, std::int64_t in_features, DType packed_dtype,
                           const Tensor& bias) {
  if (out_features <= 0 || in_features <= 0) {
    throw Error(
        fmt::format("linear: weight shape [{}, {}] is invalid; both features must be "
                    "positive",
                    out_features, in_features));
  }
  check_compute_dtype(packed_dtype, "packed weight");
  if (bias.defined()) {
    if (bias.dim() != 1 || bias.size(0) != out_features) {
      throw Error(fmt::format("linear: bias {} does not match out_features {}; expected [{}]",
                              bias.describe(), out_features, out_features));
    }
    check_compute_dtype(bias.dtype(), "bias");
  }

  // Ask oneDNN for its preferred weight layout for a representative problem.
  const DataType compute = onednn_data_type(packed_dtype, kKernel);
  const dnnl::memory::desc src({kPackingRows, in_features}, compute, FormatTag::ab);
  const dnnl::memory::desc any({in_features, out_features}, compute, FormatTag::any);
  const dnnl::memory::desc dst({kPackingRows, out_features}, compute, FormatTag::ab);
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, any, dst), onednn_attr(),
                                        onednn_engine());

  primitives_ = std::make_shared<Primitives>();
  primitives_->packed_desc = pd.weights_desc();
  layout_ = describe_layout(primitives_->packed_desc, packed_dtype);
  packed_ = empty_for_desc(primitives_->packed_desc);
  if (bias.defined()) {
    bias_ = onednn_contiguous(bias, DType::f32, kKernel);
  }
}

PackedLinear::PackedLinear(const Tensor& weight, const Tensor& bias,
                           std::optional<DType> packed_dtype)
    : PackedLinear(check_weight(weight).size(0), weight.size(1),
                   packed_dtype.value_or(weight.dtype()), bias) {
  // W [N, K] read as W^T [K, N] through its strides; the reorder converts and packs.
  const Tensor weight_t = weight.transpose(0, 1);
  const bool execute = !weight.is_dry() && !packed_.is_dry();
  onednn_reorder(onednn_plain_desc(weight_t, kKernel), weight_t, primitives_->packed_desc, packed_,
                 execute);
}

PackedLinear PackedLinear::allocate(std::int64_t out_features, std::int64_t in_features,
                                    DType packed_dtype, const Tensor& bias) {
  PackedLinear linear(out_features, in_features, packed_dtype, bias);
  // Padding must be zero: the kernels read the padded rows and columns.
  if (!linear.packed_.is_dry()) {
    std::memset(linear.packed_.data(), 0, linear.layout_.bytes);
  }
  return linear;
}

void PackedLinear::write_rows(const Tensor& rows, std::int64_t first_row) {
  if (!rows.defined() || rows.dim() != 2 || rows.size(1) != layout_.k || !rows.is_contiguous()) {
    throw Error(fmt::format("linear: write_rows needs contiguous rows [count, {}]; got {}",
                            layout_.k, rows.defined() ? rows.describe() : "an undefined tensor"));
  }
  check_compute_dtype(rows.dtype(), "write_rows");
  const std::int64_t count = rows.size(0);
  if (first_row < 0 || first_row + count > layout_.n) {
    throw Error(fmt::format("linear: write_rows of {} rows at row {} exceeds out_features {}",
                            count, first_row, layout_.n));
  }
  if (packed_.is_dry() || rows.is_dry() || count == 0) {
    return;
  }

  std::vector<std::int64_t> k_offsets(static_cast<std::size_t>(layout_.k));
  for (std::int64_t k = 0; k < layout_.k; ++k) {
    k_offsets[static_cast<std::size_t>(k)] = layout_.k_offset(k);
  }
  const auto k_count = static_cast<std::size_t>(layout_.k);
  const std::size_t row_bytes = dtype_bytes(rows.dtype(), k_count);
  const auto* source = static_cast<const std::uint8_t*>(rows.data());
  parallel_for(0, count, 16, [&](std::int64_t begin, std::int64_t end) {
    // Each row is converted to the packed dtype first, then scattered element by element.
    std::vector<std::uint8_t> converted(dtype_bytes(layout_.dtype, k_count));
    for (std::int64_t r = begin; r < end; ++r) {
      convert_elements(source + static_cast<std::size_t>(r) * row_bytes, rows.dtype(),
                       converted.data(), layout_.dtype, k_count);
      const std::int64_t base = layout_.n_offset(first_row + r);
      if (layout_.dtype == DType::bf16) {
        scatter_row(reinterpret_cast<const std::uint16_t*>(converted.data()), k_offsets, base,
                    packed_.data_as<std::uint16_t>());
      } else {
        scatter_row(reinterpret_cast<const float*>(converted.data()), k_offsets, base,
                    packed_.data_as<float>());
      }
    }
  });
}

Tensor PackedLinear::forward(const Tensor& x, std::optional<DType> out_dtype) const {
  if (!x.defined() || x.dim() < 1) {
    throw Error("linear: input must be a tensor [..., in_features] with at least one dimension");
  }
  Shape out_shape = x.shape();
  out_shape.back() = layout_.n;
  Tensor out = Tensor::empty(out_shape, out_dtype.value_or(x.dtype()));
  forward_into(x, out);
  return out;
}

void PackedLinear::forward_into(const Tensor& x, const Tensor& out) const {
  if (!x.defined() || x.dim() < 1 || x.size(-1) != layout_.k) {
    throw Error(fmt::format("linear: input {} does not end in in_features {}; expected [..., {}]",
                            x.defined() ? x.describe() : "undefined", layout_.k, layout_.k));
  }
  check_compute_dtype(x.dtype(), "input");
  Shape expected = x.shape();
  expected.back() = layout_.n;
  if (!out.defined() || out.shape() != expected || !out.is_contiguous()) {
    throw Error(fmt::format("linear: output {} is invalid; expected a contiguous tensor {}",
                            out.defined() ? out.describe() : "undefined", shape_str(expected)));
  }
  check_compute_dtype(out.dtype(), "output");
  const std::int64_t rows = x.numel() / layout_.k;
  if (rows == 0) {
    return;
  }
  const bool execute = !dry_run_active() && !x.is_dry() && !out.is_dry() && !packed_.is_dry();

  // Shapes: src [rows, K] in the packed dtype; dst [rows, N]. The bf16 kernels write f32 or
  // bf16 directly; the f32 kernels write f32, converted afterwards for a bf16 output.
  const Tensor src = onednn_contiguous(x, layout_.dtype, kKernel).view({rows, layout_.k});
  const DType dst_dtype = layout_.dtype == DType::bf16 ? out.dtype() : DType::f32;
  const Tensor out_2d = out.view({rows, layout_.n});
  const Tensor dst =
      dst_dtype == out.dtype() ? out_2d : Tensor::empty({rows, layout_.n}, dst_dtype);

  const auto entry = primitives_->get(layout_, rows, bias_.defined(), dst_dtype);
  const dnnl::memory::desc weights_desc = entry->pd.weights_desc();
  Tensor weights = packed_;
  if (weights_desc != primitives_->packed_desc) {
    weights = empty_for_desc(weights_desc);
    onednn_reorder(primitives_->packed_desc, packed_, weights_desc, weights, execute);
  }
  const Tensor scratchpad = empty_scratchpad(entry->pd);
  if (execute) {
    std::unordered_map<int, dnnl::memory> arguments = {
        {DNNL_ARG_SRC, onednn_memory(src, kKernel)},
        {DNNL_ARG_WEIGHTS, onednn_memory(weights_desc, weights)},
        {DNNL_ARG_DST, onednn_memory(dst, kKernel)}};
    if (bias_.defined()) {
      arguments.emplace(DNNL_ARG_BIAS, onednn_memory(bias_.view({1, layout_.n}), kKernel));
    }
    onednn_execute(entry->primitive, std::move(arguments), scratchpad);
  }
  if (dst_dtype != out.dtype()) {
    onednn_reorder(onednn_plain_desc(dst, kKernel), dst, onednn_plain_desc(out_2d, kKernel), out_2d,
                   execute);
  }
}

std::string PackedLinear::implementation(std::int64_t rows, DType out_dtype) const {
  const DType dst_dtype = layout_.dtype == DType::bf16 ? out_dtype : DType::f32;
  return primitives_->get(layout_, rows, bias_.defined(), dst_dtype)->pd.impl_info_str();
}

}  // namespace ethereal::cpu
