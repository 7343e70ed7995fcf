// Throughput of the attention kernel against the machine's bf16 peak, and of the row kernels
// (layer norm, RMS norm, GELU) in GB/s.
//
// The peak is measured in this program: every pool thread runs a loop of independent
// vdpbf16ps instructions on registers (each 512-bit vdpbf16ps is 32 lanes x 2 products x
// 2 FLOP = 64 FLOP). It is measured once before the benchmarks (best of three 0.3 s runs) so
// that the attention benchmarks can report their fraction of it, and again as the benchmark
// Bf16Peak so that its spread shows next to the others.
//
// Each FLOP counter comes in two forms: per wall-clock second (GFLOP/s, of_peak), the number
// that matters on a dedicated machine, and per second of process CPU time (core_GFLOP/s,
// of_core_peak), which stays meaningful when other processes share the cores. The CPU-time
// form counts OpenMP threads spinning at barriers as busy, so it can only understate the
// kernel's efficiency.
//
// Attention FLOPs are 4 * Sq * Sk * D * H (two matrix products of 2 FLOP per multiply-add).
// Run: ethereal_attention_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <omp.h>

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "kernels/cpu/activation.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/simd.h"
#include "runtime/parallel.h"
#include "runtime/tensor.h"

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

namespace {

using ethereal::DType;
using ethereal::Tensor;

// Independent accumulators per thread: enough to cover the latency of vdpbf16ps on current
// x86 cores with two vector pipes.
constexpr int kPeakAccumulators = 16;
constexpr std::int64_t kPeakFlopsPerInstruction = 64;

// Runs `iterations` rounds of kPeakAccumulators independent vdpbf16ps on the calling thread;
// returns a value derived from the results so that the loop cannot be removed.
float peak_loop_on_this_thread(std::int64_t iterations) {
#if defined(__AVX512BF16__)
  __m512 acc[kPeakAccumulators];
  for (int i = 0; i < kPeakAccumulators; ++i) {
    acc[i] = _mm512_set1_ps(static_cast<float>(i));
  }
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3F80);  // bf16 1.0
  const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3A80);  // bf16 ~0.001
  for (std::int64_t n = 0; n < iterations; ++n) {
#pragma GCC unroll 16
    for (int i = 0; i < kPeakAccumulators; ++i) {
      acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    }
  }
  __m512 total = acc[0];
  for (int i = 1; i < kPeakAccumulators; ++i) {
    total = _mm512_add_ps(total, acc[i]);
  }
  return ethereal::cpu::simd::reduce_add(ethereal::cpu::simd::Vec16(total));
#else
  (void)iterations;
  return 0.0f;
#endif
}

// FLOPs of one call of peak_loop_on_this_thread; 0 without AVX512-BF16.
double peak_loop_flops(std::int64_t iterations) {
#if defined(__AVX512BF16__)
  return static_cast<double>(iterations) * kPeakAccumulators * kPeakFlopsPerInstruction;
#else
  (void)iterations;
  return 0.0;
#endif
}

// Runs the peak loop on every pool thread; returns the FLOPs executed.
double run_peak_loop(std::int64_t iterations) {
  const int threads = ethereal::thread_count();
  float sink = 0.0f;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
  sink += peak_loop_on_this_thread(iterations);
  benchmark::DoNotOptimize(sink);
  return threads * peak_loop_flops(iterations);
}

// CPU time of all threads of this process, in seconds.
double process_cpu_seconds() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
}

// Peak rates in GFLOP/s: per wall-clock second (all threads), and per CPU second (one core
// busy for one second). On a machine shared with other work, only the second is meaningful.
struct Peak {
  double wall = 0.0;
  double per_core = 0.0;
};

double thread_cpu_seconds() {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
}

// Best of three runs of about 0.3 s each; zeros without AVX512-BF16. The per-core rate comes
// from the calling thread alone, timed by its own CPU clock, so that neither other processes
// nor threads waiting at a barrier lower it.
Peak measure_peak() {
  Peak best;
  for (int trial = 0; trial < 3; ++trial) {
    const auto start = std::chrono::steady_clock::now();
    double flops = 0.0;
    double seconds = 0.0;
    while (seconds < 0.3) {
      flops += run_peak_loop(1 << 20);
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    best.wall = std::max(best.wall, flops / seconds * 1e-9);

    const double cpu_start = thread_cpu_seconds();
    float sink = 0.0f;
    flops = 0.0;
    while (thread_cpu_seconds() - cpu_start < 0.3) {
      sink += peak_loop_on_this_thread(1 << 20);
      flops += peak_loop_flops(1 << 20);
    }
    benchmark::DoNotOptimize(sink);
    best.per_core = std::max(best.per_core, flops / (thread_cpu_seconds() - cpu_start) * 1e-9);
  }
  return best;
}

Peak peak;

// Sets the GFLOP/s counters of a benchmark that executed `flops` in `cpu_seconds` of process
// CPU time: GFLOP/s (wall clock), core_GFLOP/s (per CPU second) and, when the peak is known,
// of_peak and of_core_peak.
void report_flops(benchmark::State& state, double flops, double cpu_seconds) {
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsRate);
  state.counters["core_GFLOP/s"] = flops * 1e-9 / cpu_seconds;
  if (peak.wall > 0.0) {
    state.counters["of_peak"] =
        benchmark::Counter(flops * 1e-9 / peak.wall, benchmark::Counter::kIsRate);
    state.counters["of_core_peak"] = flops * 1e-9 / cpu_seconds / peak.per_core;
  }
}

void Bf16Peak(benchmark::State& state) {
  double flops = 0.0;
  const double cpu_start = process_cpu_seconds();
  for (auto _ : state) {
    flops += run_peak_loop(1 << 20);
  }
  report_flops(state, flops, process_cpu_seconds() - cpu_start);
}
BENCHMARK(Bf16Peak)->UseRealTime()->Unit(benchmark::kMillisecond);

void Attention(benchmark::State& state) {
  const std::int64_t tokens = state.range(0);
  constexpr std::int64_t kHeads = 24;
  constexpr std::int64_t kDim = 128;
  // Deterministic values in [-1, 1]; the kernel's speed does not depend on them.
  std::vector<float> values(static_cast<std::size_t>(tokens * kHeads * kDim));
  for (std::size_t i = 0; i < values.size(); ++i) {
    values[i] = static_cast<float>((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
  }
  const Tensor x = Tensor::from_floats(values, {tokens, kHeads, kDim}, DType::bf16);
  const double cpu_start = process_cpu_seconds();
  for (auto _ : state) {
    Tensor out = ethereal::cpu::attention(x, x, x);
    benchmark::DoNotOptimize(out.data());
  }
  const double flops = 4.0 * static_cast<double>(tokens) * static_cast<double>(tokens) * kDim *
                       kHeads * static_cast<double>(state.iterations());
  report_flops(state, flops, process_cpu_seconds() - cpu_start);
}
BENCHMARK(Attention)->Arg(4096)->Arg(8192)->UseRealTime()->Unit(benchmark::kMillisecond);

// Row kernels on [4096, 3072]; bytes moved = input read + output written.
template <typename Kernel>
void row_kernel(benchmark::State& state, DType dtype, Kernel kernel) {
  const ethereal::Shape shape{4096, 3072};
  std::vector<float> values(static_cast<std::size_t>(4096 * 3072));
  for (std::size_t i = 0; i < values.size(); ++i) {
    values[i] = static_cast<float>(i % 1999) / 999.0f - 1.0f;
  }
  const Tensor x = Tensor::from_floats(values, shape, dtype);
  const Tensor weight = Tensor::from_floats(std::vector<float>(3072, 1.0f), {3072}, dtype);
  for (auto _ : state) {
    Tensor out = kernel(x, weight);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * 2 * static_cast<std::int64_t>(x.nbytes()));
}

void LayerNorm(benchmark::State& state) {
  row_kernel(state, static_cast<DType>(state.range(0)),
             [](const Tensor& x, const Tensor&) { return ethereal::cpu::layer_norm(x); });
}
void RmsNorm(benchmark::State& state) {
  row_kernel(state, static_cast<DType>(state.range(0)),
             [](const Tensor& x, const Tensor& w) { return ethereal::cpu::rms_norm(x, w); });
}
void GeluTanh(benchmark::State& state) {
  row_kernel(state, static_cast<DType>(state.range(0)),
             [](const Tensor& x, const Tensor&) { return ethereal::cpu::gelu_tanh(x); });
}
// Argument: the DType (0 = f32, 1 = bf16).
BENCHMARK(LayerNorm)->Arg(0)->Arg(1)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(RmsNorm)->Arg(0)->Arg(1)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(GeluTanh)->Arg(0)->Arg(1)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    return 1;
  }
  peak = measure_peak();
  std::printf("threads: %d, bf16 peak: %.1f GFLOP/s wall clock, %.1f GFLOP/s per core\n",
              ethereal::thread_count(), peak.wall, peak.per_core);
  benchmark::AddCustomContext("threads", std::to_string(ethereal::thread_count()));
  benchmark::AddCustomContext("bf16_peak_gflops", std::to_string(peak.wall));
  benchmark::AddCustomContext("bf16_peak_gflops_per_core", std::to_string(peak.per_core));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
