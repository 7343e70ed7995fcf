// Time of one full-size Qwen2.5-VL-7B decoder layer and one vision block on random bf16
// weights built in memory (no checkpoint needed).
//
//   DecoderLayer/300: hidden 3584, 28 query heads over 4 key/value heads of 128, SwiGLU 18944,
//                     300 tokens (about an Edit-Plus prompt with one 384 x 384 image), causal.
//   VisionBlock/784:  hidden 1280, 16 heads of 80, SwiGLU 3420, the 28 x 28 patches of a
//                     392 x 392 image, window attention (and full attention, as in 4 of the 32
//                     blocks).
// Counters: gflops_linear is 2 x tokens x linear weights per second (attention not counted).
//
// Suggested command (the machine is shared, so quote medians):
//   ethereal_text_encoder_bench --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/cpu/linear.h"
#include "models/qwen2_5_vl/language_model.h"
#include "models/qwen2_5_vl/positions.h"
#include "models/qwen2_5_vl/vision_tower.h"
#include "runtime/parallel.h"
#include "runtime/tensor.h"

namespace ethereal {
namespace {

// Uniform values in [-scale, scale) from a per-tensor seed, in bf16.
Tensor random_bf16(const Shape& shape, std::uint64_t seed, float scale) {
  Tensor tensor = Tensor::empty(shape, DType::bf16);
  auto* data = tensor.data_as<std::uint16_t>();
  parallel_for(0, tensor.numel(), 1 << 16, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      std::uint64_t x = (static_cast<std::uint64_t>(i) + 1) * 0x9E3779B97F4A7C15ull ^ seed;
      x ^= x >> 31;
      x *= 0xBF58476D1CE4E5B9ull;
      x ^= x >> 29;
      const float unit = static_cast<float>(x >> 40) / static_cast<float>(1ull << 24);
      data[i] = f32_to_bf16((2.0f * unit - 1.0f) * scale);
    }
  });
  return tensor;
}

cpu::PackedLinear random_linear(std::int64_t out, std::int64_t in, bool bias, std::uint64_t seed) {
  const Tensor weight = random_bf16({out, in}, seed, 0.02f);
  const Tensor bias_tensor = bias ? random_bf16({out}, seed + 1, 0.02f) : Tensor();
  return cpu::PackedLinear(weight, bias_tensor, DType::bf16);
}

Tensor ones_bf16(std::int64_t size) {
  return Tensor::from_floats(std::vector<float>(static_cast<std::size_t>(size), 1.0f), {size},
                             DType::bf16);
}

struct DecoderFixture {
  Qwen25VlTextConfig config;  // the 7B defaults
  Qwen25VlDecoderLayer layer;
  std::int64_t linear_weights = 0;

  DecoderFixture()
      : layer{ones_bf16(config.hidden_size),
              random_linear(config.num_attention_heads * config.head_dim, config.hidden_size, true,
                            11),
              random_linear(config.num_key_value_heads * config.head_dim, config.hidden_size, true,
                            12),
              random_linear(config.num_key_value_heads * config.head_dim, config.hidden_size, true,
                            13),
              random_linear(config.hidden_size, config.num_attention_heads * config.head_dim, false,
                            14),
              ones_bf16(config.hidden_size),
              Qwen25VlMlp{random_linear(config.intermediate_size, config.hidden_size, false, 15),
                          random_linear(config.intermediate_size, config.hidden_size, false, 16),
                          random_linear(config.hidden_size, config.intermediate_size, false, 17),
                          Qwen25VlActivation::silu}} {
    const std::int64_t q = config.num_attention_heads * config.head_dim;
    const std::int64_t kv = config.num_key_value_heads * config.head_dim;
    linear_weights = config.hidden_size * (2 * q + 2 * kv + 3 * config.intermediate_size);
  }
};

void BM_DecoderLayer(benchmark::State& state) {
  static const std::unique_ptr<DecoderFixture> fixture = std::make_unique<DecoderFixture>();
  const std::int64_t tokens = state.range(0);
  std::vector<std::int64_t> rows(static_cast<std::size_t>(3 * tokens));
  for (std::int64_t i = 0; i < 3 * tokens; ++i) {
    rows[static_cast<std::size_t>(i)] = i % tokens;  // text positions t = h = w = index
  }
  const Tensor positions = Tensor::from_blob(rows.data(), {3, tokens}, DType::int64, nullptr);
  const Qwen25VlRopeTables rope = text_rope_tables(positions, fixture->config, true);
  const Tensor input = random_bf16({tokens, fixture->config.hidden_size}, 21, 1.0f);
  for (auto _ : state) {
    Tensor x = input.clone();
    fixture->layer.forward_(x, rope, fixture->config, {});
    benchmark::DoNotOptimize(x.data());
  }
  state.counters["tokens"] = static_cast<double>(tokens);
  state.counters["gflops_linear"] = benchmark::Counter(
      2.0 * static_cast<double>(tokens) * static_cast<double>(fixture->linear_weights) * 1e-9,
      benchmark::Counter::kIsIterationInvariantRate);
}

struct VisionFixture {
  Qwen25VlVisionConfig config;  // the 7B defaults
  Qwen25VlVisionBlock block;
  std::int64_t linear_weights = 0;

  VisionFixture()
      : block{ones_bf16(config.hidden_size),
              random_linear(3 * config.hidden_size, config.hidden_size, true, 31),
              random_linear(config.hidden_size, config.hidden_size, true, 32),
              ones_bf16(config.hidden_size),
              Qwen25VlMlp{random_linear(config.intermediate_size, config.hidden_size, true, 33),
                          random_linear(config.intermediate_size, config.hidden_size, true, 34),
                          random_linear(config.hidden_size, config.intermediate_size, true, 35),
                          Qwen25VlActivation::silu},
              false} {
    linear_weights = config.hidden_size * (4 * config.hidden_size + 3 * config.intermediate_size);
  }
};

void run_vision_block(benchmark::State& state, bool full_attention) {
  static const std::unique_ptr<VisionFixture> fixture = std::make_unique<VisionFixture>();
  // A square grid with state.range(0) patches (784 = 28 x 28).
  std::int64_t side = 2;
  while ((side + 2) * (side + 2) <= state.range(0)) {
    side += 2;
  }
  const std::vector<ImageGrid> grids = {{1, side, side}};
  const VisionWindowLayout layout = vision_window_layout(grids, fixture->config);
  const Qwen25VlRopeTables rope = vision_rope_tables(grids, layout, fixture->config);
  const std::vector<std::int64_t> windows(layout.cu_window_seqlens.begin(),
                                          layout.cu_window_seqlens.end() - 1);
  const std::vector<std::int64_t> frames = {0};
  Qwen25VlVisionBlock block = fixture->block;
  block.full_attention = full_attention;
  const Tensor input = random_bf16({side * side, fixture->config.hidden_size}, 41, 1.0f);
  for (auto _ : state) {
    Tensor x = input.clone();
    block.forward_(x, rope, fixture->config.num_heads, windows, frames, {});
    benchmark::DoNotOptimize(x.data());
  }
  state.counters["patches"] = static_cast<double>(side * side);
  state.counters["gflops_linear"] = benchmark::Counter(
      2.0 * static_cast<double>(side * side) * static_cast<double>(fixture->linear_weights) * 1e-9,
      benchmark::Counter::kIsIterationInvariantRate);
}

void BM_VisionBlockWindow(benchmark::State& state) {
  run_vision_block(state, false);
}
void BM_VisionBlockFull(benchmark::State& state) {
  run_vision_block(state, true);
}

BENCHMARK(BM_DecoderLayer)
    ->Arg(300)
    ->Iterations(1)
    ->Repetitions(3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_VisionBlockWindow)
    ->Arg(784)
    ->Iterations(1)
    ->Repetitions(3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_VisionBlockFull)
    ->Arg(784)
    ->Iterations(1)
    ->Repetitions(3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace ethereal

BENCHMARK_MAIN();
