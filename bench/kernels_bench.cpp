// Throughput of the oneDNN-backed kernels against the machine's bf16 peak.
//
// Every benchmark reports GFLOP/s (a rate counter), and the linear, matmul and convolution
// benchmarks also report pct_of_peak against the bf16 peak. The peak loop runs independent
// vdpbf16ps instructions (32 bf16 pairs = 64 FLOP each) on 12 accumulators held in registers,
// enough to hide the instruction's latency.
//
// Timing, chosen with --timing (after Google Benchmark's own flags):
//   real (default): rates per wall-clock second; pct_of_peak is against the all-thread peak.
//     Right for a machine that runs nothing else.
//   cpu: rates per second of process CPU time summed over threads, that is per busy core;
//     pct_of_peak is against the single-thread peak measured in thread CPU time. On a machine
//     shared with other work this still measures what the kernel does while it runs, though
//     OpenMP threads that spin while waiting for a descheduled peer add CPU time and so lower
//     the figure.
//
// Suggested command (quote medians):
//   ethereal_kernels_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <string_view>
#include <vector>

#include "kernels/cpu/conv.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/onednn.h"
#include "runtime/parallel.h"
#include "runtime/tensor.h"

namespace ethereal::cpu {
namespace {

constexpr int kAccumulators = 12;
constexpr double kFlopPerDot = 64.0;  // one 512-bit vdpbf16ps: 32 pairs, multiply and add

#ifdef __AVX512BF16__
// Runs `iterations` rounds of kAccumulators independent vdpbf16ps and returns a value that
// depends on all of them, so the compiler keeps the work.
__attribute__((noinline)) float run_bf16_dot_loop(std::int64_t iterations) {
  __m512 accumulators[kAccumulators];
  for (__m512& accumulator : accumulators) {
    accumulator = _mm512_setzero_ps();
  }
  __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80);  // bf16 1.0
  __m512bh b = (__m512bh)_mm512_set1_epi16(0x3580);  // bf16 2^-20: sums stay small and normal
  for (std::int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < kAccumulators; ++j) {
      accumulators[j] = _mm512_dpbf16_ps(accumulators[j], a, b);
    }
    // An empty asm that claims to change a and b stops the compiler from hoisting the loop.
    asm volatile("" : "+v"(a), "+v"(b));
  }
  __m512 sum = accumulators[0];
  for (int j = 1; j < kAccumulators; ++j) {
    sum = _mm512_add_ps(sum, accumulators[j]);
  }
  return _mm512_reduce_add_ps(sum);
}
#endif

constexpr bool kHaveBf16Dot =
#ifdef __AVX512BF16__
    true;
#else
    false;
#endif

enum class Timing { real, cpu };
Timing timing = Timing::real;

// Runs the dot loop on `threads` threads and returns the total FLOP executed.
double run_peak_loop(int threads, std::int64_t iterations) {
#ifdef __AVX512BF16__
  float sink = 0.0f;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
  sink += run_bf16_dot_loop(iterations);
  benchmark::DoNotOptimize(sink);
#endif
  return static_cast<double>(threads) * static_cast<double>(iterations) * kAccumulators *
         kFlopPerDot;
}

double clock_seconds(clockid_t clock) {
  timespec now{};
  clock_gettime(clock, &now);
  return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) * 1e-9;
}

// The peak pct_of_peak refers to, in GFLOP/s: the best of five runs of the dot loop, on all
// threads against the wall clock, or on one thread against its CPU time (--timing=cpu).
double reference_peak_gflops() {
  static const double peak = [] {
    const bool cpu = timing == Timing::cpu;
    const clockid_t clock = cpu ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC;
    double best = 0.0;
    for (int run = 0; run < 5; ++run) {
      const double start = clock_seconds(clock);
      const double flop = run_peak_loop(cpu ? 1 : thread_count(), 1 << 21);
      best = std::max(best, flop / (clock_seconds(clock) - start) * 1e-9);
    }
    return best;
  }();
  return peak;
}

void set_flop_counters(benchmark::State& state, double flop_per_iteration) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(flop_per_iteration * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  if (kHaveBf16Dot) {
    // Per-iteration FLOP as a share of one second at peak, which as a rate is % of peak.
    state.counters["pct_of_peak"] =
        benchmark::Counter(flop_per_iteration * 1e-9 / reference_peak_gflops() * 100.0,
                           benchmark::Counter::kIsIterationInvariantRate);
  }
}

// A tensor of deterministic values in [-1, 1) (a cheap hash, not a statistical generator).
Tensor filled_tensor(const Shape& shape, DType dtype) {
  std::vector<float> values(static_cast<std::size_t>(shape_numel(shape)));
  std::uint32_t state = 12345;
  for (float& value : values) {
    state = state * 1664525u + 1013904223u;
    value = static_cast<float>(state >> 8) * (2.0f / 16777216.0f) - 1.0f;
  }
  return Tensor::from_floats(values, shape, dtype);
}

void run_peak(benchmark::State& state, int threads) {
  if (!kHaveBf16Dot) {
    state.SkipWithError("built without AVX-512 BF16 (-march=native on a CPU without it)");
    return;
  }
  double flop = 0.0;
  for (auto _ : state) {
    flop = run_peak_loop(threads, 1 << 20);
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(flop * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
}

// Linear: tokens x in_features by a packed [out_features, in_features] weight.
void run_linear(benchmark::State& state, DType dtype) {
  const std::int64_t rows = state.range(0), k = state.range(1), n = state.range(2);
  const PackedLinear linear(filled_tensor({n, k}, dtype), filled_tensor({n}, dtype));
  const Tensor x = filled_tensor({rows, k}, dtype);
  for (auto _ : state) {
    Tensor y = linear.forward(x);
    benchmark::DoNotOptimize(y.storage()->data());
  }
  set_flop_counters(state, 2.0 * static_cast<double>(rows) * k * n);
}

// Attention scores: [heads, tokens, 128] x [heads, tokens, 128]^T.
void run_scores(benchmark::State& state) {
  const std::int64_t heads = 24, tokens = state.range(0), dim = 128;
  const Tensor q = filled_tensor({heads, tokens, dim}, DType::bf16);
  const Tensor k = filled_tensor({heads, tokens, dim}, DType::bf16);
  for (auto _ : state) {
    Tensor scores = matmul(q, k, true, 0.088f);
    benchmark::DoNotOptimize(scores.storage()->data());
  }
  set_flop_counters(state, 2.0 * heads * static_cast<double>(tokens) * tokens * dim);
}

// 3x3 convolution, channels -> channels, padding 1. NCHW in and out.
void run_conv(benchmark::State& state, DType dtype) {
  const std::int64_t channels = state.range(0), size = state.range(1);
  Conv2dOptions options;
  options.padding = Padding2d::symmetric(1);
  const Conv2d conv(filled_tensor({channels, channels, 3, 3}, dtype),
                    filled_tensor({channels}, dtype), options);
  const Tensor x = filled_tensor({1, channels, size, size}, dtype);
  for (auto _ : state) {
    Tensor y = conv.forward(x);
    benchmark::DoNotOptimize(y.storage()->data());
  }
  set_flop_counters(state, 2.0 * static_cast<double>(channels) * channels * 9 * size * size);
}

// The layout change Conv2d makes on each side of the primitive: an NCHW <-> NHWC copy of an
// activation, here NCHW -> NHWC of [1, C, HW, HW]. Reports bytes read and written.
void run_nchw_to_nhwc(benchmark::State& state) {
  const std::int64_t channels = state.range(0), size = state.range(1);
  const Tensor x = filled_tensor({1, channels, size, size}, DType::bf16);
  for (auto _ : state) {
    Tensor y = onednn_contiguous(x.permute({0, 2, 3, 1}), DType::bf16, "bench");
    benchmark::DoNotOptimize(y.storage()->data());
  }
  state.SetBytesProcessed(state.iterations() * 2 * static_cast<std::int64_t>(x.nbytes()));
}

benchmark::internal::Benchmark* with_timing(benchmark::internal::Benchmark* bench) {
  bench->Unit(benchmark::kMillisecond);
  return timing == Timing::cpu ? bench->MeasureProcessCPUTime() : bench->UseRealTime();
}

void register_benchmarks() {
  with_timing(benchmark::RegisterBenchmark("Bf16PeakSingleThread", run_peak, 1));
  with_timing(benchmark::RegisterBenchmark("Bf16PeakAllThreads", run_peak, thread_count()));

  // The transformer's linear layers: tokens x (3072 -> 3072, 3072 -> 12288, 12288 -> 3072).
  with_timing(benchmark::RegisterBenchmark("LinearBf16", run_linear, DType::bf16))
      ->ArgNames({"M", "K", "N"})
      ->ArgsProduct({{256, 1024, 4096}, {3072}, {3072, 12288}})
      ->Args({256, 12288, 3072})
      ->Args({1024, 12288, 3072})
      ->Args({4096, 12288, 3072});
  with_timing(benchmark::RegisterBenchmark("LinearF32", run_linear, DType::f32))
      ->ArgNames({"M", "K", "N"})
      ->Args({1024, 3072, 3072});

  with_timing(benchmark::RegisterBenchmark("MatmulScoresBf16", run_scores))
      ->ArgNames({"tokens"})
      ->Arg(1024);

  // The VAE decoder's stage sizes for a 1024x1024 image: 384 channels at 128x128, 192 at
  // 256x256, 96 at 512x512.
  for (const DType dtype : {DType::bf16, DType::f32}) {
    const std::string name = std::string("Conv3x3") + (dtype == DType::bf16 ? "Bf16" : "F32");
    with_timing(benchmark::RegisterBenchmark(name.c_str(), run_conv, dtype))
        ->ArgNames({"C", "HW"})
        ->Args({384, 128})
        ->Args({192, 256})
        ->Args({96, 512});
  }
  with_timing(benchmark::RegisterBenchmark("NchwToNhwcBf16", run_nchw_to_nhwc))
      ->ArgNames({"C", "HW"})
      ->Args({384, 128})
      ->Args({192, 256})
      ->Args({96, 512});
}

}  // namespace
}  // namespace ethereal::cpu

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  for (int i = 1; i < argc; ++i) {
    const std::string_view argument = argv[i];
    if (argument == "--timing=real") {
      ethereal::cpu::timing = ethereal::cpu::Timing::real;
    } else if (argument == "--timing=cpu") {
      ethereal::cpu::timing = ethereal::cpu::Timing::cpu;
    } else {
      std::fprintf(stderr,
                   "ethereal_kernels_bench: unknown option '%s'; expected --timing=real, "
                   "--timing=cpu or a Google Benchmark flag (--help lists them)\n",
                   argv[i]);
      return 2;
    }
  }
  ethereal::cpu::register_benchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
