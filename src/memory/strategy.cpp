#include "memory/strategy.h"

#include <fmt/format.h>

#include "runtime/error.h"

namespace ethereal::memory {

std::string LoadStrategy::weight_format_name() const {
  return weight_format ? std::string(quant::quant_format_name(*weight_format)) : "bf16";
}

PipelineLoadOptions LoadStrategy::load_options(const PipelineLoadOptions& base) const {
  PipelineLoadOptions options = base;
  options.quant.format = weight_format;
  options.placement = placement;
  return options;
}

int LoadStrategy::precision_rank() const {
  if (!weight_format) {
    return 0;
  }
  switch (*weight_format) {
    case quant::QuantFormat::int8: return 1;
    case quant::QuantFormat::fp8_e4m3: return 2;
    case quant::QuantFormat::nf4: return 3;
  }
  return 3;
}

bool LoadStrategy::operator==(const LoadStrategy& other) const {
  return name == other.name && weight_format == other.weight_format &&
         placement == other.placement && chunked_attention == other.chunked_attention &&
         tiled_vae == other.tiled_vae;
}

EditMemoryOptions working_memory_options(const LoadStrategy& strategy, EditMemoryOptions memory) {
  if (strategy.chunked_attention && memory.attention_query_tile == 0) {
    memory.attention_query_tile = 128;
  }
  if (strategy.tiled_vae && !memory.vae_tiling) {
    memory.vae_tiling = true;
    memory.vae_tile_px = 256;
  }
  return memory;
}

LoadStrategy with_reduced_working_memory(LoadStrategy strategy) {
  strategy.chunked_attention = true;
  strategy.tiled_vae = true;
  return strategy;
}

const std::vector<LoadStrategy>& standard_strategies() {
  static const std::vector<LoadStrategy> strategies = {
      {"fp16_full", std::nullopt, Placement::resident},
      {"fp8_optimized", quant::QuantFormat::fp8_e4m3, Placement::resident},
      {"nf4_quantized", quant::QuantFormat::nf4, Placement::resident},
      {"cpu_offload", std::nullopt, Placement::model_offload},
      {"sequential_offload", std::nullopt, Placement::sequential_offload},
  };
  return strategies;
}

std::string standard_strategy_names() {
  std::string names;
  for (const LoadStrategy& strategy : standard_strategies()) {
    names += names.empty() ? strategy.name : ", " + strategy.name;
  }
  return names;
}

LoadStrategy parse_strategy(std::string_view name) {
  for (const LoadStrategy& strategy : standard_strategies()) {
    if (strategy.name == name) {
      return strategy;
    }
  }
  const std::size_t plus = name.find('+');
  if (plus != std::string_view::npos) {
    const std::string_view format = name.substr(0, plus);
    const std::string_view placement = name.substr(plus + 1);
    try {
      LoadStrategy strategy;
      strategy.name = std::string(name);
      if (format != "bf16") {
        strategy.weight_format = quant::parse_quant_format(format);
      }
      strategy.placement = parse_placement(placement);
      return strategy;
    } catch (const InvalidInputError& error) {
      throw InvalidInputError(fmt::format("strategy \"{}\": {}", name, error.what()));
    }
  }
  throw InvalidInputError(fmt::format(
      "unknown strategy \"{}\"; use one of {}, or a combination FORMAT+PLACEMENT such as "
      "fp8_e4m3+model_offload (formats bf16, fp8_e4m3, nf4, int8; placements resident, "
      "model_offload, sequential_offload)",
      name, standard_strategy_names()));
}

}  // namespace ethereal::memory
