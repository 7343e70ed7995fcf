// Linear layers (y = x W^T + b) on oneDNN's matmul with weights packed once.
//
// Design: the weight arrives PyTorch-style, W [out_features, in_features]. oneDNN's matmul
// computes dst[M, N] = src[M, K] x weights[K, N], so the packed matrix is W^T with K =
// in_features and N = out_features, reordered once into the blocked layout that oneDNN's
// matmul kernel reads fastest (asked for with format_tag::any). The packed bytes live in a
// Tensor from the current allocator, so they are counted like every other buffer.
//
// Packed layout measured with oneDNN 2.6.3 on an AMD EPYC Zen 4 (brgemm kernels). For bf16 it
// is "BA16a64b2a": blocks of 64 columns of N are outermost, then blocks of 32 rows of K. Inside
// a block, 16 pairs of K rows follow each other, and each pair interleaves its 64 columns
// (k0 n0, k1 n0, k0 n1, k1 n1, ...), the operand order of vdpbf16ps. For f32 it is "BA16a64b".
// K is padded with zeros to a multiple of 32 (bf16) or 16 (f32), and N to a multiple of 64.
//
// The layout oneDNN picks did not depend on M (checked for M = 1 ... 4096 with K of 17 and
// 3072 and N of 33 and 3072). So the weights are packed once for M = kPackingRows, and each M gets
// its own primitive that reads them. Should oneDNN prefer another layout for some M, forward()
// reorders the packed weights into it on every call: correct, but it costs a pass over the
// weights per call.
//
// Precision: the compute dtype is the packed dtype (by default the weight's). Activations of
// another dtype are converted to it first: f32 activations with bf16 weights are rounded to
// bf16 (to nearest even), as the bf16 kernels need both operands in bf16. Accumulation is f32
// and the bias (kept as f32) is added inside the primitive before the single rounding to the
// output dtype.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/tensor.h"

namespace ethereal::cpu {

// The blocked layout of packed weights, for code that writes weights straight into it (for
// example dequantisation). Axis 0 is K (in_features), axis 1 is N (out_features).
struct PackedLayout {
  struct InnerBlock {
    int axis = 0;           // 0: K, 1: N
    std::int64_t size = 0;  // elements of that axis in the block
  };

  std::int64_t k = 0;  // in_features
  std::int64_t n = 0;  // out_features
  DType dtype = DType::bf16;
  std::int64_t padded_k = 0;
  std::int64_t padded_n = 0;
  // Elements between consecutive outer blocks along K and along N.
  std::int64_t outer_stride_k = 0;
  std::int64_t outer_stride_n = 0;
  // From outermost to innermost; an axis may appear more than once ("16a64b2a").
  std::vector<InnerBlock> inner_blocks;
  std::string format;  // oneDNN tag spelling, e.g. "BA16a64b2a"
  std::size_t bytes = 0;

  // Element (not byte) offset of W[n_index, k_index], that is W^T[k_index, n_index], in the
  // packed buffer. Separable: offset = k_offset(k_index) + n_offset(n_index).
  std::int64_t element_offset(std::int64_t k_index, std::int64_t n_index) const;
  std::int64_t k_offset(std::int64_t k_index) const;
  std::int64_t n_offset(std::int64_t n_index) const;
};

class PackedLinear {
 public:
  // Rows of the representative problem the weights are packed for (see the note above).
  static constexpr std::int64_t kPackingRows = 1024;

  // Packs `weight` [out_features, in_features] (f32 or bf16, any strides) and keeps `bias`
  // [out_features] (f32 or bf16, optional) as f32. `packed_dtype` (f32 or bf16) defaults to the
  // weight's dtype. In a dry run, or when `weight` is dry, the packed tensor is allocated with
  // its real size and left unfilled.
  explicit PackedLinear(const Tensor& weight, const Tensor& bias = Tensor(),
                        std::optional<DType> packed_dtype = std::nullopt);

  // Allocates zero-filled packed weights for the caller to fill through write_rows() or
  // packed_weight() and layout(). `bias` as in the constructor.
  static PackedLinear allocate(std::int64_t out_features, std::int64_t in_features,
                               DType packed_dtype, const Tensor& bias = Tensor());

  // y = x W^T + b. x [..., in_features] f32 or bf16, contiguous or not. Returns
  // [..., out_features] in `out_dtype` (default: x's dtype).
  Tensor forward(const Tensor& x, std::optional<DType> out_dtype = std::nullopt) const;
  // Writes into `out` [..., out_features] (contiguous, f32 or bf16); x as in forward().
  void forward_into(const Tensor& x, const Tensor& out) const;

  // Packs `rows` [count, in_features] (f32 or bf16, contiguous) as rows first_row ...
  // first_row + count - 1 of W. Does nothing when the packed weights are dry.
  void write_rows(const Tensor& rows, std::int64_t first_row);

  std::int64_t in_features() const { return layout_.k; }
  std::int64_t out_features() const { return layout_.n; }
  DType packed_dtype() const { return layout_.dtype; }
  const PackedLayout& layout() const { return layout_; }
  // The packed weights: uint8 [layout().bytes].
  const Tensor& packed_weight() const { return packed_; }
  // f32 [out_features], or undefined without bias.
  const Tensor& bias() const { return bias_; }

  // Name of the oneDNN implementation forward() runs for `rows` rows of input and an
  // `out_dtype` output, e.g. "brg:avx512_core_bf16".
  std::string implementation(std::int64_t rows, DType out_dtype) const;

  struct Primitives;  // cached oneDNN objects, defined in linear.cpp

 private:
  PackedLinear(std::int64_t out_features, std::int64_t in_features, DType packed_dtype,
               const Tensor& bias);

  PackedLayout layout_;
  Tensor packed_;
  Tensor bias_;
  std::shared_ptr<Primitives> primitives_;
};

}  // namespace ethereal::cpu
