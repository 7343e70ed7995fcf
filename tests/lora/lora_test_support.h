// Helpers shared by the LoRA tests: seeded factors, writers of LoRA files in the published key
// layouts, and double-precision references of the update.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "io/safetensors_writer.h"
#include "models/lora/lora.h"
#include "runtime/dtype.h"
#include "runtime/tensor.h"
#include "support/inputs.h"

namespace ethereal::lora_testing {

// Key spellings of one layout: "<prefix><module><down_suffix>" and so on.
struct KeyLayout {
  std::string name;  // for test messages
  std::string prefix;
  std::string down_suffix;
  std::string up_suffix;
  bool has_alpha = true;
};

inline std::vector<KeyLayout> all_layouts() {
  return {
      {"lightning", "", ".lora_down.weight", ".lora_up.weight", true},
      {"lightning without alpha", "", ".lora_down.weight", ".lora_up.weight", false},
      {"transformer prefix", "transformer.", ".lora_down.weight", ".lora_up.weight", true},
      {"diffusion_model prefix", "diffusion_model.", ".lora_down.weight", ".lora_up.weight", true},
      {"comfy prefix", "model.diffusion_model.", ".lora_down.weight", ".lora_up.weight", true},
      {"peft", "transformer.", ".lora_A.weight", ".lora_B.weight", false},
      {"peft default adapter", "", ".lora_A.default.weight", ".lora_B.default.weight", false},
      {"peft base model", "base_model.model.transformer.", ".lora_A.weight", ".lora_B.weight",
       false},
  };
}

// One module's factors to write.
struct ModuleFactors {
  std::string module;
  Tensor down;  // [rank, in]
  Tensor up;    // [out, rank]
  float alpha = 0.0f;
};

inline ModuleFactors random_module(const std::string& module, std::int64_t out, std::int64_t in,
                                   std::int64_t rank, std::uint32_t seed, float alpha,
                                   DType dtype = DType::f32) {
  return {module, test_support::uniform_tensor({rank, in}, dtype, seed),
          test_support::uniform_tensor({out, rank}, dtype, seed + 1), alpha};
}

// Writes `modules` in `layout`; alpha is stored as a 0-dimensional f32 tensor.
inline void write_lora(const std::filesystem::path& path, const KeyLayout& layout,
                       const std::vector<ModuleFactors>& modules) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const ModuleFactors& factors : modules) {
    const std::string base = layout.prefix + factors.module;
    tensors.emplace_back(base + layout.down_suffix, factors.down);
    tensors.emplace_back(base + layout.up_suffix, factors.up);
    if (layout.has_alpha) {
      const float alpha[] = {factors.alpha};
      tensors.emplace_back(base + ".alpha", Tensor::from_floats(alpha, {}, DType::f32));
    }
  }
  write_safetensors(path, tensors);
}

// Reference of scale * up @ down in double: element [o, i] and the sum of |terms| that bounds
// its rounding error.
struct DeltaReference {
  std::int64_t out = 0;
  std::int64_t in = 0;
  std::vector<double> value;         // [out, in]
  std::vector<double> absolute_sum;  // [out, in]
};

inline DeltaReference reference_delta(const Tensor& down, const Tensor& up, double scale) {
  DeltaReference reference;
  reference.out = up.size(0);
  reference.in = down.size(1);
  const std::int64_t rank = down.size(0);
  const std::vector<float> d = down.to_floats();
  const std::vector<float> u = up.to_floats();
  reference.value.assign(static_cast<std::size_t>(reference.out * reference.in), 0.0);
  reference.absolute_sum.assign(reference.value.size(), 0.0);
  for (std::int64_t o = 0; o < reference.out; ++o) {
    for (std::int64_t i = 0; i < reference.in; ++i) {
      double sum = 0.0;
      double absolute = 0.0;
      for (std::int64_t k = 0; k < rank; ++k) {
        const double term = static_cast<double>(u[o * rank + k]) * d[k * reference.in + i];
        sum += term;
        absolute += std::abs(term);
      }
      reference.value[o * reference.in + i] = scale * sum;
      reference.absolute_sum[o * reference.in + i] = std::abs(scale) * absolute;
    }
  }
  return reference;
}

// Reference of x @ delta^T for x [rows, in] (row-major floats): values and sums of |terms|.
struct UpdateReference {
  std::vector<double> value;         // [rows, out]
  std::vector<double> absolute_sum;  // [rows, out]
};

// Sums the update of every delta in `deltas` (one per file or adapter).
inline UpdateReference reference_update(const std::vector<float>& x, std::int64_t rows,
                                        const std::vector<DeltaReference>& deltas) {
  UpdateReference reference;
  const std::int64_t out = deltas.front().out;
  const std::int64_t in = deltas.front().in;
  reference.value.assign(static_cast<std::size_t>(rows * out), 0.0);
  reference.absolute_sum.assign(reference.value.size(), 0.0);
  for (const DeltaReference& delta : deltas) {
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t o = 0; o < out; ++o) {
        double sum = 0.0;
        double absolute = 0.0;
        for (std::int64_t i = 0; i < in; ++i) {
          sum += x[r * in + i] * delta.value[o * in + i];
          absolute += std::abs(x[r * in + i]) * delta.absolute_sum[o * in + i];
        }
        reference.value[r * out + o] += sum;
        reference.absolute_sum[r * out + o] += absolute;
      }
    }
  }
  return reference;
}

}  // namespace ethereal::lora_testing
