// Joining and splitting tensors along an axis.
//
// concat copies into a new contiguous tensor, while split and chunk return views that share the
// input's storage (no copy, no allocation), so writing into a piece writes into the input.
// Call .contiguous() on a piece that must be dense. Any dtype is accepted.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/tensor.h"

namespace ethereal::cpu {

// Concatenates `inputs` along `axis` (negative counts from the end). All inputs must have the
// same dtype, rank and extents except along `axis`. Returns a new contiguous tensor, which a
// dry run only allocates.
Tensor concat(const std::vector<Tensor>& inputs, std::int64_t axis);

// Views of consecutive pieces of `x` along `axis` with the given extents, which must sum to
// x.size(axis).
std::vector<Tensor> split(const Tensor& x, const std::vector<std::int64_t>& sizes,
                          std::int64_t axis);

// `count` views of equal extent along `axis`, which must divide x.size(axis) exactly.
std::vector<Tensor> chunk(const Tensor& x, std::int64_t count, std::int64_t axis);

}  // namespace ethereal::cpu
