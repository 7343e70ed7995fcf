// Time per forward pass of the Qwen-Image transformer at full width (D = 3072, 24 heads of 128,
// MLP 12288, joint dim 3584) with 2 blocks of seeded random bf16 weights built in memory, at
// the token counts of two edits with zero_cond_t:
//   512x512 output with one 512x512 reference: 1024 + 1024 image tokens, 200 text tokens;
//   1024x1024 output with one 1024x1024 reference: 4096 + 4096 image tokens, 200 text tokens.
// Next to it, the plain bf16 PackedLinear at M = 4096, K = N = 3072 gives the matmul
// throughput of this machine, and the program ends with each forward's efficiency relative to
// it (goal: 80% or more).
//
// FLOP count per forward, 2 FLOP per multiply-add: every linear layer 2 M K N (the q, k, v,
// out and MLP layers of both streams, the modulation linears on their 1 or 2 embedding rows,
// and the top-level layers), plus attention 4 S^2 D per block (S = all tokens, D = heads x
// head_dim).
//
// Two rates per benchmark: GFLOP/s over wall-clock time, and cpu_GFLOP/s over the process CPU
// time divided by the pool's thread count. On a machine shared with other jobs the wall-clock
// rate drops with the CPU share this process gets. The CPU-time rate stays close to what the
// threads achieve while they run, though threads spinning at OpenMP barriers count as busy.
// The efficiency ratio is printed for both.
//
// Run: ethereal_transformer_bench (each benchmark runs 3 repetitions of 1 iteration; a
// 1024x1024 forward takes tens of seconds on a 2-core machine).
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <time.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "kernels/cpu/linear.h"
#include "models/qwen_image/transformer.h"
#include "runtime/parallel.h"
#include "runtime/tensor.h"

namespace {

using ethereal::DType;
using ethereal::ModelPrecision;
using ethereal::PatchGrid;
using ethereal::QwenImageTransformer;
using ethereal::QwenImageTransformerConfig;
using ethereal::Tensor;

constexpr std::int64_t kTextTokens = 200;
constexpr std::int64_t kLinearRows = 4096;
constexpr std::int64_t kLinearWidth = 3072;
const char* const kRateCounter = "GFLOP/s";
const char* const kCpuRateCounter = "cpu_GFLOP/s";

double process_cpu_seconds() {
  timespec now{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
}

// Times one call of `work` per benchmark iteration (wall clock as the manual time) and sets
// both rate counters for `flops` per call.
template <typename Work>
void run_timed(benchmark::State& state, double flops, Work&& work) {
  double cpu_seconds = 0.0;
  for (auto _ : state) {
    const double cpu_start = process_cpu_seconds();
    const auto start = std::chrono::steady_clock::now();
    work();
    state.SetIterationTime(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    cpu_seconds += process_cpu_seconds() - cpu_start;
  }
  state.counters[kRateCounter] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  const double thread_seconds = cpu_seconds / static_cast<double>(ethereal::thread_count());
  state.counters[kCpuRateCounter] =
      flops * 1e-9 * static_cast<double>(state.iterations()) / thread_seconds;
}

QwenImageTransformerConfig bench_config() {
  QwenImageTransformerConfig config;  // the released model's widths
  config.num_layers = 2;
  config.zero_cond_t = true;
  return config;
}

const QwenImageTransformer& bench_model() {
  static const QwenImageTransformer model =
      QwenImageTransformer::random(bench_config(), ModelPrecision::bf16(), 2511);
  return model;
}

// A [rows, cols] bf16 tensor of values in [-1, 1) from a fixed linear congruential sequence.
Tensor random_activations(std::int64_t rows, std::int64_t cols, std::uint32_t seed) {
  std::vector<float> values(static_cast<std::size_t>(rows * cols));
  std::uint32_t state = seed;
  for (float& value : values) {
    state = state * 1664525u + 1013904223u;
    value = static_cast<float>(state >> 8) / 8388608.0f - 1.0f;
  }
  return Tensor::from_floats(values, {rows, cols}, DType::bf16);
}

// FLOPs of one forward pass with `image_tokens` image and `text_tokens` text tokens.
double forward_flops(const QwenImageTransformerConfig& config, double image_tokens,
                     double text_tokens) {
  const double d = static_cast<double>(config.inner_dim());
  const double tokens = image_tokens + text_tokens;
  const double embedding_rows = config.zero_cond_t ? 2.0 : 1.0;
  // Per token per block: q, k, v, out (4 D^2) and the MLP (8 D^2) of its own stream.
  const double block_linear = 2.0 * tokens * 12.0 * d * d;
  const double block_modulation = 2.0 * (embedding_rows + 1.0) * d * 6.0 * d;
  const double block_attention = 4.0 * tokens * tokens * d;
  const double top = 2.0 * image_tokens * static_cast<double>(config.in_channels) * d +
                     2.0 * text_tokens * static_cast<double>(config.joint_attention_dim) * d +
                     2.0 * embedding_rows * (256.0 * d + d * d) + 2.0 * d * 2.0 * d +
                     2.0 * image_tokens * d * static_cast<double>(config.output_dim());
  return static_cast<double>(config.num_layers) *
             (block_linear + block_modulation + block_attention) +
         top;
}

// Arguments: the side of the target and of the reference image in pixels (16 pixels per
// patch token).
void BM_TransformerForward(benchmark::State& state) {
  const std::int64_t grid = state.range(0) / 16;
  const QwenImageTransformer& model = bench_model();
  ethereal::TransformerInputs inputs;
  inputs.hidden_states = random_activations(2 * grid * grid, 64, 1);
  inputs.encoder_hidden_states = random_activations(kTextTokens, 3584, 2);
  inputs.sigma = 0.75;
  inputs.img_shapes = {PatchGrid{1, grid, grid}, PatchGrid{1, grid, grid}};

  const double flops = forward_flops(model.config(), static_cast<double>(2 * grid * grid),
                                     static_cast<double>(kTextTokens));
  run_timed(state, flops, [&] {
    const Tensor out = model.forward(inputs);
    benchmark::DoNotOptimize(out.data());
  });
  const double tokens = static_cast<double>(2 * grid * grid + kTextTokens);
  const double attention = 4.0 * tokens * tokens * static_cast<double>(model.config().inner_dim()) *
                           static_cast<double>(model.config().num_layers);
  state.counters["TFLOP"] = flops * 1e-12;
  state.counters["attention_share"] = attention / flops;
  state.counters["tokens"] = tokens;
}
BENCHMARK(BM_TransformerForward)
    ->Arg(512)
    ->Arg(1024)
    ->Iterations(1)
    ->Repetitions(3)
    ->UseManualTime()
    ->Unit(benchmark::kSecond);

void BM_PlainLinear(benchmark::State& state) {
  const ethereal::cpu::PackedLinear linear(random_activations(kLinearWidth, kLinearWidth, 3),
                                           Tensor());
  const Tensor x = random_activations(kLinearRows, kLinearWidth, 4);
  benchmark::DoNotOptimize(linear.forward(x).data());  // creates the oneDNN primitive
  const double flops = 2.0 * kLinearRows * kLinearWidth * kLinearWidth;
  run_timed(state, flops, [&] {
    const Tensor y = linear.forward(x);
    benchmark::DoNotOptimize(y.data());
  });
}
BENCHMARK(BM_PlainLinear)
    ->Iterations(3)
    ->Repetitions(3)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// Console output, plus the rate counters of each benchmark: the median over repetitions, or
// the single run's value without repetitions.
class RateCollector : public benchmark::ConsoleReporter {
 public:
  // Colours only on a terminal, as the default reporter does.
  RateCollector() : ConsoleReporter(::isatty(::fileno(stdout)) ? OO_ColorTabular : OO_Tabular) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      const std::string name = run.run_name.function_name + "/" + run.run_name.args;
      const bool median = run.run_type == Run::RT_Aggregate && run.aggregate_name == "median";
      const bool single = run.run_type == Run::RT_Iteration && !has_median_[name];
      if (!median && !single) {
        continue;
      }
      has_median_[name] = has_median_[name] || median;
      for (const char* counter : {kRateCounter, kCpuRateCounter}) {
        const auto found = run.counters.find(counter);
        if (found != run.counters.end()) {
          rates_[counter][name] = found->second.value;
        }
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }

  // counter name -> benchmark name -> rate
  const std::map<std::string, std::map<std::string, double>>& rates() const { return rates_; }

 private:
  std::map<std::string, std::map<std::string, double>> rates_;
  std::map<std::string, bool> has_median_;
};

void print_efficiency(const std::string& counter, const std::map<std::string, double>& rates) {
  const auto baseline = rates.find("BM_PlainLinear/");
  if (baseline == rates.end() || baseline->second <= 0.0) {
    return;
  }
  std::printf("\n%s: plain bf16 linear M=%lld K=N=%lld: %.1f (%d threads)\n", counter.c_str(),
              static_cast<long long>(kLinearRows), static_cast<long long>(kLinearWidth),
              baseline->second, ethereal::thread_count());
  for (const auto& [name, rate] : rates) {
    if (name.rfind("BM_TransformerForward", 0) == 0) {
      std::printf("%s: %s %.1f = %.0f%% of the plain linear\n", name.c_str(), counter.c_str(), rate,
                  100.0 * rate / baseline->second);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    return 1;
  }
  RateCollector reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  for (const auto& [counter, rates] : reporter.rates()) {
    print_efficiency(counter, rates);
  }
  return 0;
}
