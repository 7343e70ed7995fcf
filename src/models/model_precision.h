// The dtypes a model is built with: how its weights are kept in memory and what dtype its
// activations have between kernels.
//
// Real runs use bf16 for both. Parity tests against the f32 reference use f32 for both, so
// tolerances can be tight. Norm statistics and accumulations are f32 inside the kernels in
// either case.
#pragma once

#include "runtime/dtype.h"

namespace ethereal {

struct ModelPrecision {
  DType weight_dtype = DType::bf16;   // packed linear weights, norm weights
  DType compute_dtype = DType::bf16;  // activations between kernels

  static constexpr ModelPrecision bf16() { return {DType::bf16, DType::bf16}; }
  static constexpr ModelPrecision f32() { return {DType::f32, DType::f32}; }
};

}  // namespace ethereal
