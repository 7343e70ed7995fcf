// Linear layers (y = x W^T + b) on quantised weights: fp8_e4m3, nf4 or int8.
//
// Two paths, picked by the number of input rows M (all leading axes of x together):
//
// Direct (M < direct_row_limit, default 160): the weights are decoded in registers and
// multiplied with x right away (direct_linear.h). With a few rows, reading the weights
// dominates. At K = 3072 and N = 3072 or 12288 on the 2-core Zen 4 VM of
// docs/benchmarks/quant.md, this path still ran faster than decoding the whole weight for the
// matmul at 64 and 96 rows in every format and at 128 rows in five of six cases, and as fast or
// slower at 256 rows in all six. Per call this allocates the output and a bf16 copy of x
// [M, DirectPlan::padded_k] (in_features rounded up to 32, 64 or 128, plus up to 32), plus a
// contiguous copy first when x is strided. Nothing the size of the weight is allocated.
//
// Dequantise + matmul (larger M): the matmul costs O(M K N) and the decoding O(K N), so the
// weight is decoded into oneDNN's packed bf16 layout and multiplied by oneDNN's bf16 matmul.
// To bound memory, this runs in panels of output channels. Each panel of `panel_columns`
// channels is decoded into one scratch buffer (reused by every panel) and multiplied, in chunks
// of rows, into a dense [rows, panel] temporary of at most about 4 MiB. The temporary is copied
// into the output's columns, because oneDNN 2.6 runs its fast kernels only on a dense
// destination. A weight that fits one panel skips the temporary and the copy. Per call this
// allocates, from the current allocator: the bf16 copy of x (unless x is already contiguous
// bf16), the panel scratch (K x panel_columns bf16, padded to oneDNN's blocks), the temporary
// (only with more than one panel), oneDNN's scratchpad and the output. By default a weight of up
// to 24 MiB in bf16 is one panel, and larger ones use equal panels of about 8 MiB.
//
// Precision: both paths round x to bf16 and accumulate in f32; the bias (kept as f32) is added
// before the single rounding to the output dtype. The large-M path multiplies with the
// dequantised weights rounded to bf16; the direct path applies the fp8 and int8 scales to the
// f32 sums instead (see direct_linear.h).
//
// Dry run: when dry_run_active() or x or the weight is dry, forward allocates exactly what a
// real call allocates, in the same order, and computes nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include "quant/quant_format.h"
#include "runtime/tensor.h"

namespace ethereal::quant {

struct QuantizedLinearOptions {
  enum class Path : std::uint8_t { automatic, direct, dequantize_matmul };

  // Inputs with fewer rows than this take the direct path.
  std::int64_t direct_row_limit = 160;
  // Output channels per panel of the dequantise + matmul path, rounded up to a multiple of 64;
  // 0 picks one panel for weights of up to 24 MiB in bf16, else equal panels of about 8 MiB.
  std::int64_t panel_columns = 0;
  // Rows per matmul call when there is more than one panel; 0 picks a temporary result of about
  // 4 MiB.
  std::int64_t chunk_rows = 0;
  // Forces one path (for tests and benchmarks); automatic picks by direct_row_limit.
  Path path = Path::automatic;
};

class QuantizedLinear {
 public:
  // Takes `weight` (validated here; throws InvalidInputError when malformed) and keeps `bias`
  // [out_features] (f32 or bf16, optional) as f32.
  explicit QuantizedLinear(QuantizedWeight weight, const Tensor& bias = Tensor(),
                           QuantizedLinearOptions options = {});
  ~QuantizedLinear();
  QuantizedLinear(QuantizedLinear&&) noexcept;
  QuantizedLinear& operator=(QuantizedLinear&&) noexcept;

  // y = x W^T + b. x [..., in_features] f32 or bf16, any strides. Returns [..., out_features]
  // in `out_dtype` (f32 or bf16; default: x's dtype).
  Tensor forward(const Tensor& x, std::optional<DType> out_dtype = std::nullopt) const;
  // Writes into `out` [..., out_features] (contiguous, f32 or bf16); x as in forward().
  void forward_into(const Tensor& x, const Tensor& out) const;

  std::int64_t in_features() const { return weight_.in_features; }
  std::int64_t out_features() const { return weight_.out_features; }
  QuantFormat format() const { return weight_.format; }
  const QuantizedWeight& weight() const { return weight_; }
  // f32 [out_features], or undefined without bias.
  const Tensor& bias() const { return bias_; }
  // Output channels per panel of the dequantise + matmul path (a multiple of 64).
  std::int64_t panel_columns() const { return panel_columns_; }
  // True when an input of `rows` rows takes the direct path.
  bool uses_direct_path(std::int64_t rows) const;

 private:
  struct Panels;  // oneDNN matmuls of the full and the last panel, in quantized_linear.cpp

  void forward_direct(const Tensor& x, const Tensor& out, std::int64_t rows, bool execute) const;
  void forward_panels(const Tensor& x, const Tensor& out, std::int64_t rows, bool execute) const;

  QuantizedWeight weight_;
  Tensor bias_;
  QuantizedLinearOptions options_;
  std::int64_t panel_columns_ = 0;
  std::unique_ptr<Panels> panels_;
};

}  // namespace ethereal::quant
