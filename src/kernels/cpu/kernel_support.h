// Argument checks, dtype dispatch and row addressing shared by the CPU kernels.
//
// Errors thrown here are ethereal::Error (a caller bug, not bad user input). Each message
// names the kernel, the argument, what was expected and what was found.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "kernels/cpu/simd.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "runtime/parallel.h"
#include "runtime/tensor.h"

namespace ethereal::cpu::support {

using simd::bf16_t;

// Throws unless `t` is defined and f32 or bf16.
void require_float(const char* kernel, const char* argument, const Tensor& t);
// Throws unless `t` has exactly `rank` axes.
void require_rank(const char* kernel, const char* argument, const Tensor& t, std::int64_t rank);
// Throws unless the last axis of `t` has stride 1 (or extent 1), the layout every row kernel
// reads.
void require_unit_last_stride(const char* kernel, const char* argument, const Tensor& t);
void require_contiguous(const char* kernel, const char* argument, const Tensor& t);
void require_same_shape(const char* kernel, const char* first_name, const Tensor& first,
                        const char* second_name, const Tensor& second);
// Throws unless `vector` is a contiguous 1-D f32 or bf16 tensor of `length` elements.
void require_vector(const char* kernel, const char* argument, const Tensor& vector,
                    std::int64_t length);

// True when a kernel must only allocate its outputs: dry-run mode, or any input without data.
template <typename... Tensors>
bool skip_compute(const Tensors&... inputs) {
  return dry_run_active() || (inputs.is_dry() || ...);
}

// Calls fn(float{}) or fn(bf16_t{}) for the element type of `dtype`.
template <typename Fn>
decltype(auto) dispatch_float(DType dtype, Fn&& fn) {
  if (dtype == DType::bf16) {
    return std::forward<Fn>(fn)(bf16_t{});
  }
  if (dtype != DType::f32) {
    throw Error(std::string("dispatch_float: expected f32 or bf16, got ") +
                std::string(dtype_name(dtype)));
  }
  return std::forward<Fn>(fn)(float{});
}

// Addresses the rows of a tensor viewed as [rows, cols], where cols is the last axis (stride 1)
// and rows enumerate all leading indices in row-major order. Leading axes may have any strides.
class RowIndexer {
 public:
  explicit RowIndexer(const Tensor& t);

  std::int64_t rows() const { return rows_; }
  std::int64_t cols() const { return cols_; }
  // Offset in elements of the first element of `row`, relative to t.data().
  std::int64_t offset(std::int64_t row) const;

 private:
  std::int64_t rows_ = 1;
  std::int64_t cols_ = 1;
  // Leading axes after merging those that collapse into a single stride, innermost last.
  Shape extents_;
  Shape strides_;
};

// Rows of one kernel's work per parallel_for chunk: enough that each chunk moves about 64 KiB.
std::int64_t row_grain(std::int64_t cols);

// Runs fn(input_row, output_row) on the thread pool for every row of two tensors with the same
// row count. T and U are their element types. `output` may be `input` (in-place kernels).
template <typename T, typename U, typename Fn>
void for_each_row(const Tensor& input, const Tensor& output, Fn&& fn) {
  const RowIndexer input_rows(input);
  const RowIndexer output_rows(output);
  const T* in = static_cast<const T*>(input.data());
  U* out = static_cast<U*>(output.data());
  parallel_for(0, input_rows.rows(), row_grain(input_rows.cols()),
               [&](std::int64_t begin, std::int64_t end) {
                 for (std::int64_t row = begin; row < end; ++row) {
                   fn(in + input_rows.offset(row), out + output_rows.offset(row));
                 }
               });
}

}  // namespace ethereal::cpu::support
