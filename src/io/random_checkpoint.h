// Safetensors files of seeded random values, for benchmarks and tests that need checkpoints
// too large to keep in the repository (full-width transformer blocks, for example).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "runtime/dtype.h"
#include "runtime/tensor.h"

namespace ethereal {

// Writes `tensors` (name and shape) to `path` in `dtype` (bf16, f16 or f32), each generated and
// written in chunks of about 1 MiB, so memory use does not grow with the file. Values are
// uniform: 2-D tensors in [-a, a] with a = 1 / sqrt(columns); 1-D tensors whose name ends in
// ".bias" in [-0.05, 0.05]; other 1-D tensors in [0.9, 1.1] (norm scales). They depend only on
// `seed` and the tensor's position in the list. The file is written to a temporary and
// renamed (see write_safetensors).
void write_random_checkpoint(const std::filesystem::path& path,
                             const std::vector<std::pair<std::string, Shape>>& tensors,
                             std::uint64_t seed, DType dtype = DType::bf16);

}  // namespace ethereal
