// Load strategies: a weight format for the transformer's and text encoder's linear layers, a
// placement, and working-memory options.
//
// The five named strategies:
//   fp16_full            bf16 weights (f16 where bf16 is unsupported), resident
//   fp8_optimized        fp8 e4m3 with a scale per output channel, resident
//   nf4_quantized        nf4 in blocks of 64 with quantised block scales, resident
//   cpu_offload          bf16 weights, one component at a time (model_offload)
//   sequential_offload   bf16 weights, transformer blocks streamed from the checkpoint
// Other combinations are named "<format>+<placement>", for example "fp8_e4m3+model_offload"
// or "nf4+sequential_offload", with "bf16" for unquantised weights.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pipeline/edit_pipeline.h"
#include "quant/quant_format.h"

namespace ethereal::memory {

struct LoadStrategy {
  std::string name;
  // nullopt: bf16 (or the model's weight dtype).
  std::optional<quant::QuantFormat> weight_format;
  Placement placement = Placement::resident;
  // Working memory: attention in query tiles, and the VAE in tiles.
  bool chunked_attention = false;
  bool tiled_vae = false;

  // "bf16", "fp8_e4m3", "nf4" or "int8".
  std::string weight_format_name() const;
  // Copies `base` with this strategy's weight format and placement.
  PipelineLoadOptions load_options(const PipelineLoadOptions& base) const;
  // Lower is more precise: 0 for bf16, 1 for int8, 2 for fp8, 3 for nf4.
  int precision_rank() const;

  bool operator==(const LoadStrategy& other) const;
};

// `memory` with the strategy's working-memory options applied: attention in query tiles of 128
// rows and the VAE in 256-pixel tiles when the strategy asks for them.
EditMemoryOptions working_memory_options(const LoadStrategy& strategy, EditMemoryOptions memory);
// `strategy` with attention in query tiles and a tiled VAE.
LoadStrategy with_reduced_working_memory(LoadStrategy strategy);

// The five named strategies, in the specification's default preference order.
const std::vector<LoadStrategy>& standard_strategies();
// The names of standard_strategies(), joined with ", " (for messages).
std::string standard_strategy_names();
// A named strategy or a "<format>+<placement>" combination. Throws InvalidInputError that
// lists the valid names.
LoadStrategy parse_strategy(std::string_view name);

}  // namespace ethereal::memory
