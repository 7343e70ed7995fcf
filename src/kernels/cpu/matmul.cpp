#include "kernels/cpu/matmul.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "kernels/cpu/onednn.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace ethereal::cpu {

namespace {

constexpr std::string_view kKernel = "matmul";

PrimitiveCache<dnnl::matmul>& matmul_cache() {
  static PrimitiveCache<dnnl::matmul> cache(256);
  return cache;
}

// `tensor` with size-1 dimensions added in front up to `rank`.
Tensor with_rank(Tensor tensor, std::int64_t rank) {
  while (tensor.dim() < rank) {
    tensor = tensor.unsqueeze(0);
  }
  return tensor;
}

std::string desc_key(const dnnl::memory::desc& desc) {
  const dnnl_memory_desc_t& data = desc.data;
  const auto& strides = data.format_desc.blocking.strides;
  return fmt::format("{}/{}/{}", static_cast<int>(data.data_type),
                     fmt::join(data.dims, data.dims + data.ndims, ","),
                     fmt::join(strides, strides + data.ndims, ","));
}

std::shared_ptr<const PrimitiveCache<dnnl::matmul>::Entry> get_primitive(
    const dnnl::memory::desc& a, const dnnl::memory::desc& b, const dnnl::memory::desc& out,
    float alpha) {
  const std::string key = fmt::format("{}|{}|{}|{:a}|{}", desc_key(a), desc_key(b), desc_key(out),
                                      alpha, thread_count());
  return matmul_cache().get(key, [&] {
    dnnl::primitive_attr attr = onednn_attr();
    if (alpha != 1.0f) {
      attr.set_output_scales(0, {alpha});
    }
    return dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, out), attr, onednn_engine());
  });
}

// A contiguous copy of `tensor` [B..., R, C] with its batch dimensions expanded to `batch`
// (size-1 dimensions repeat), made by one reorder that reads broadcast dimensions with
// stride 0.
Tensor expand_batch(const Tensor& tensor, const Shape& batch) {
  Shape shape = batch;
  shape.push_back(tensor.size(-2));
  shape.push_back(tensor.size(-1));
  Shape strides = tensor.strides();
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (tensor.shape()[i] != batch[i]) {
      strides[i] = 0;
    }
  }
  Tensor result = Tensor::empty(shape, tensor.dtype());
  const dnnl::memory::desc source(onednn_dims(shape), onednn_data_type(tensor.dtype(), kKernel),
                                  onednn_dims(strides));
  const bool execute = !tensor.is_dry() && !result.is_dry();
  onednn_reorder(source, tensor, onednn_plain_desc(result, kKernel), result, execute);
  return result;
}

// Runs out = alpha * a x b on tensors of equal rank, b already [..., K, N] (any strides).
// With `allow_copies`, falls back to contiguous, expanded copies when oneDNN offers only its
// reference kernel for the strides given.
void run_matmul(const Tensor& a, const Tensor& b_kn, bool transpose_b, const Tensor& out,
                float alpha, bool execute, bool allow_copies = true) {
  auto entry = get_primitive(onednn_plain_desc(a, kKernel), onednn_plain_desc(b_kn, kKernel),
                             onednn_plain_desc(out, kKernel), alpha);
  if (allow_copies && std::string_view(entry->pd.impl_info_str()).starts_with("ref")) {
    const Shape batch(out.shape().begin(), out.shape().end() - 2);
    const Tensor a_copy = expand_batch(a, batch);
    // b keeps its orientation: a transposed b is copied as [..., N, K] and viewed back.
    const Tensor b_source = transpose_b ? b_kn.transpose(-1, -2) : b_kn;
    Tensor b_copy = expand_batch(b_source, batch);
    if (transpose_b) {
      b_copy = b_copy.transpose(-1, -2);
    }
    run_matmul(a_copy, b_copy, transpose_b, out, alpha, execute, false);
    return;
  }
  const Tensor scratchpad = empty_scratchpad(entry->pd);
  if (execute) {
    onednn_execute(entry->primitive,
                   {{DNNL_ARG_SRC, onednn_memory(a, kKernel)},
                    {DNNL_ARG_WEIGHTS, onednn_memory(b_kn, kKernel)},
                    {DNNL_ARG_DST, onednn_memory(out, kKernel)}},
                   scratchpad);
  }
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_b, float alpha) {
  if (!a.defined() || !b.defined() || a.dim() < 2 || b.dim() < 2) {
    throw Error(fmt::format("matmul: inputs must have at least 2 dimensions; got {} and {}",
                            a.defined() ? a.describe() : "undefined",
                            b.defined() ? b.describe() : "undefined"));
  }
  if (a.dtype() != b.dtype()) {
    throw Error(fmt::format("matmul: inputs {} and {} have different dtypes; convert one first",
                            a.describe(), b.describe()));
  }
  onednn_data_type(a.dtype(), kKernel);
  const std::int64_t m = a.size(-2);
  const std::int64_t k = a.size(-1);
  const std::int64_t b_k = transpose_b ? b.size(-1) : b.size(-2);
  const std::int64_t n = transpose_b ? b.size(-2) : b.size(-1);
  if (b_k != k) {
    throw Error(fmt::format("matmul: inner dimensions differ: a {} has K = {} but b {} has {}{}",
                            a.describe(), k, b.describe(), b_k,
                            transpose_b ? " (b is transposed)" : ""));
  }

  // Batch dimensions, broadcast NumPy-style.
  const std::int64_t rank = std::max(a.dim(), b.dim());
  const Tensor a_full = with_rank(a, rank);
  const Tensor b_full = with_rank(b, rank);
  Shape out_shape;
  for (std::int64_t i = 0; i < rank - 2; ++i) {
    const std::int64_t a_size = a_full.size(i);
    const std::int64_t b_size = b_full.size(i);
    if (a_size != b_size && a_size != 1 && b_size != 1) {
      throw Error(fmt::format("matmul: batch dimensions of {} and {} do not broadcast",
                              a.describe(), b.describe()));
    }
    out_shape.push_back(a_size == 1 ? b_size : a_size);
  }
  out_shape.push_back(m);
  out_shape.push_back(n);

  Tensor out = Tensor::empty(out_shape, a.dtype());
  if (out.numel() == 0) {
    return out;
  }
  const bool execute = !dry_run_active() && !a.is_dry() && !b.is_dry() && !out.is_dry();
  if (k == 0) {
    if (execute) {
      std::memset(out.data(), 0, out.nbytes());
    }
    return out;
  }

  // Shapes: a [B..., M, K], b_kn [B..., K, N], out [B..., M, N].
  Tensor b_kn = transpose_b ? b_full.transpose(-1, -2) : b_full;
  const bool b_unbatched =
      shape_numel(Shape(b_full.shape().begin(), b_full.shape().end() - 2)) == 1;
  if (b_unbatched && a_full.is_contiguous()) {
    // The batch of a folds into its rows: one [B*M, K] x [K, N] product.
    const std::int64_t rows = a_full.numel() / k;
    while (b_kn.dim() > 2) {
      b_kn = b_kn.squeeze(0);
    }
    run_matmul(a_full.view({rows, k}), b_kn, transpose_b, out.view({rows, n}), alpha, execute);
    return out;
  }
  run_matmul(a_full, b_kn, transpose_b, out, alpha, execute);
  return out;
}

}  // namespace ethereal::cpu
