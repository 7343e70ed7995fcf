// Building blocks shared by the Qwen2.5-VL language model and vision tower.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "kernels/cpu/attention.h"
#include "models/linear_layer.h"
#include "models/qwen2_5_vl/config.h"
#include "models/weight_loader.h"
#include "runtime/tensor.h"

namespace ethereal {

// Working-memory settings of a forward pass, adjustable between calls (for example lowered by
// the memory manager after an out-of-memory error).
struct Qwen25VlOptions {
  // Max query rows per attention work item (0 selects the kernel's default). Smaller tiles
  // need less attention scratch memory per thread.
  std::int64_t attention_query_tile = 0;
  cpu::AttentionPrecision attention_precision = cpu::AttentionPrecision::automatic;
};

// down(act(gate(x)) * up(x)), the MLP of both parts (with biases in the vision tower only).
struct Qwen25VlMlp {
  LinearLayer gate_proj;
  LinearLayer up_proj;
  LinearLayer down_proj;
  Qwen25VlActivation activation = Qwen25VlActivation::silu;

  // Loads "<prefix>.gate_proj", "<prefix>.up_proj" and "<prefix>.down_proj".
  static Qwen25VlMlp load(WeightLoader& loader, const std::string& prefix, std::int64_t hidden,
                          std::int64_t intermediate, bool bias, Qwen25VlActivation activation,
                          DType weight_dtype);

  // x [S, hidden] -> [S, hidden] in x's dtype. Peak working memory is two [S, intermediate]
  // tensors.
  Tensor forward(const Tensor& x) const;
};

// Rows of x (contiguous [R, C], any dtype) regrouped in units of `unit` consecutive rows:
// unit i of the result is unit order[i] of x. Returns a new [R, C] tensor, which a dry run
// only allocates.
Tensor gather_row_units(const Tensor& x, std::span<const std::int64_t> order, std::int64_t unit);

}  // namespace ethereal
