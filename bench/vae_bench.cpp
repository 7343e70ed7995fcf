// Time and working memory of a Qwen-Image VAE decode with the real configuration (base_dim 96,
// 126.9 M parameters) and seeded random bf16 weights built in memory.
//
// Each repetition decodes [1, 16, S/8, S/8] bf16 latents to an S x S image. The weights live in
// the default allocator, and the decode runs under a fresh caching allocator. Its peak
// allocated bytes are therefore the decode's working memory (activations, convolution copies,
// attention workspace and the output), without the weights. The same decode is also run once in
// dry-run mode, and `dry_run_peak_matches` reports whether the planner's peak equals the measured
// one. BM_VaeDecodeDryRun reports the dry-run peak alone for sizes too slow to decode here.
//
// Run: ethereal_vae_bench (the repetition counts are fixed below).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "models/qwen_image/vae.h"
#include "runtime/allocator.h"
#include "runtime/tensor.h"

namespace {

using ethereal::CpuCachingAllocator;
using ethereal::DType;
using ethereal::QwenImageVae;
using ethereal::QwenImageVaeConfig;
using ethereal::ScopedAllocator;
using ethereal::Tensor;
using ethereal::VaeMemoryOptions;

constexpr double kMiB = 1024.0 * 1024.0;

const QwenImageVae& real_decoder() {
  static const QwenImageVae vae = [] {
    ethereal::RandomVaeWeights weights(2024);
    return QwenImageVae(QwenImageVaeConfig::qwen_image(), weights, ethereal::ModelPrecision::bf16(),
                        {.encoder = false, .decoder = true});
  }();
  return vae;
}

// Latents in the range the transformer produces after denormalisation (about +-3).
Tensor latents_for(std::int64_t size) {
  const std::int64_t side = size / 8;
  std::vector<float> values(static_cast<std::size_t>(16 * side * side));
  std::uint32_t state = 12345;
  for (float& v : values) {
    state = state * 1664525u + 1013904223u;
    v = 6.0f * (static_cast<float>(state >> 8) / 16777216.0f) - 3.0f;
  }
  return Tensor::from_floats(values, {1, 16, side, side}, DType::bf16);
}

VaeMemoryOptions tiled_options() {
  VaeMemoryOptions options;
  options.tiling = {.enabled = true, .tile_px = 256, .overlap_px = 64};
  return options;
}

std::int64_t dry_run_peak(const Tensor& latents, const VaeMemoryOptions& options) {
  CpuCachingAllocator allocator(CpuCachingAllocator::Options{.dry_run = true});
  {
    ScopedAllocator scope(allocator);
    benchmark::DoNotOptimize(real_decoder().decode(latents, options));
  }
  return allocator.stats().allocated_bytes.peak;
}

void run_decode(benchmark::State& state, const VaeMemoryOptions& options) {
  const QwenImageVae& vae = real_decoder();
  const Tensor latents = latents_for(state.range(0));
  CpuCachingAllocator allocator;
  for (auto _ : state) {
    ScopedAllocator scope(allocator);
    Tensor image = vae.decode(latents, options);
    benchmark::DoNotOptimize(image.data());
  }
  const std::int64_t peak = allocator.stats().allocated_bytes.peak;
  state.counters["peak_allocated_MiB"] = static_cast<double>(peak) / kMiB;
  state.counters["peak_reserved_MiB"] =
      static_cast<double>(allocator.stats().reserved_bytes.peak) / kMiB;
  state.counters["dry_run_peak_matches"] = dry_run_peak(latents, options) == peak ? 1.0 : 0.0;
}

void BM_VaeDecode(benchmark::State& state) {
  run_decode(state, {});
}

// Diffusers' default tiles (256 px every 192 px): a 3 x 3 grid at 512^2.
void BM_VaeDecodeTiled(benchmark::State& state) {
  run_decode(state, tiled_options());
}

// The planner's view only: the dry-run peak of a decode at sizes too slow to run here.
// Argument 1 selects diffusers' default tiling.
void BM_VaeDecodeDryRun(benchmark::State& state) {
  const Tensor latents = latents_for(state.range(0));
  const VaeMemoryOptions options = state.range(1) != 0 ? tiled_options() : VaeMemoryOptions{};
  std::int64_t peak = 0;
  for (auto _ : state) {
    peak = dry_run_peak(latents, options);
  }
  state.counters["peak_allocated_MiB"] = static_cast<double>(peak) / kMiB;
}

BENCHMARK(BM_VaeDecode)
    ->Arg(512)
    ->Arg(1024)
    ->Iterations(1)
    ->Repetitions(3)
    ->Unit(benchmark::kSecond)
    ->UseRealTime();

BENCHMARK(BM_VaeDecodeTiled)
    ->Arg(512)
    ->Iterations(1)
    ->Repetitions(1)
    ->Unit(benchmark::kSecond)
    ->UseRealTime();

BENCHMARK(BM_VaeDecodeDryRun)
    ->Args({1024, 0})
    ->Args({1024, 1})
    ->Args({2048, 0})
    ->Args({2048, 1})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
