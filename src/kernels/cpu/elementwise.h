// Binary element-wise arithmetic with NumPy broadcasting, and scaling by a scalar.
//
// Operands are f32 or bf16 of any strides. Shapes broadcast as in NumPy (axes aligned from the
// right, extent-1 axes stretch). Rows whose innermost stride is 1 (or 0, a broadcast) are
// vectorised, and other layouts take a scalar path. Arithmetic is f32 with one rounding to the
// result dtype, which is always the dtype of the first operand.
//
// Out-of-place forms return a new contiguous tensor of the broadcast shape. In-place forms
// (`_`) write into `a`, whose shape must equal the broadcast shape, and `b` may alias `a` only if
// it is exactly `a` (same view). In a dry run nothing is computed.
#pragma once

#include "runtime/tensor.h"

namespace ethereal::cpu {

// Returns the broadcast of two shapes. Throws ethereal::Error naming both when they do not
// broadcast.
Shape broadcast_shapes(const Shape& a, const Shape& b);

Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);

void add_(Tensor& a, const Tensor& b);
void sub_(Tensor& a, const Tensor& b);
void mul_(Tensor& a, const Tensor& b);
// a += alpha * b (for example an Euler step x += dt * velocity).
void add_scaled_(Tensor& a, const Tensor& b, float alpha);

// x * factor.
Tensor scale(const Tensor& x, float factor);
void scale_(Tensor& x, float factor);

}  // namespace ethereal::cpu
