// One full-width Qwen-Image transformer block (D = 3072, 24 heads of 128, MLP 12288) in each
// linear weight format: bf16, fp8_e4m3 (scale per output channel), int8 and nf4. For each
// format the program builds kBlocks blocks of seeded random weights, with the block layers
// quantised as the pipeline's quant policy quantises them (all 14 linears of a block, the
// modulation linears included), and reports:
//   - weight bytes per block (allocator bytes allocated while building, divided by kBlocks);
//   - time per block forward, with 1024 image tokens (a 32x32 patch grid: a 512x512 output
//     without a reference) and 64 text tokens, bf16 activations. Each call runs
//     run_transformer_block on the next of the kBlocks blocks, so its weights come from
//     memory and not from the cache of the previous call.
// The program ends with a table of each format against bf16.
//
// Weights are uniform in [-a, a] with a = sqrt(3 / in_features), biases in [-0.1, 0.1]. The
// values matter only for the round-trip error of each format, which quant_bench measures.
//
// Rates: GFLOP/s over wall-clock time, and cpu_GFLOP/s over the process CPU time divided by the
// thread count. On a shared machine both suffer, because OpenMP threads waiting at barriers
// lose their core to other processes. Pinned to one core (taskset -c 0), the comparison is
// less disturbed by other load. FLOPs per block forward:
// 2 x tokens x 12 D^2 for the q, k, v, out and MLP layers of both streams, 2 x 2 x D x 6D for
// the two modulation linears on one embedding row, and 4 x S^2 x D for attention over all
// S = 1088 tokens.
//
// Run: ethereal_block_formats_bench (each format: 3 repetitions of 2 block forwards).
#include <benchmark/benchmark.h>

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "models/qwen_image/transformer_block.h"
#include "models/qwen_image/transformer_config.h"
#include "models/qwen_image/transformer_rope.h"
#include "models/qwen_image/transformer_weights.h"
#include "quant/quant_policy.h"
#include "quant/quantize.h"
#include "quant/quantized_linear.h"
#include "runtime/allocator.h"
#include "runtime/parallel.h"
#include "runtime/tensor.h"

namespace {

using ethereal::DType;
using ethereal::LinearLayer;
using ethereal::QwenImageTransformerConfig;
using ethereal::Tensor;
using ethereal::TransformerBlockWeights;
namespace quant = ethereal::quant;

constexpr int kBlocks = 2;
constexpr std::int64_t kGridSide = 32;  // 1024 image tokens
constexpr std::int64_t kTextTokens = 64;

// RandomWeightSource's weights (seed 0), in `format` for the layers the quant policy quantises and
// in bf16 for the rest.
class FormatWeightSource final : public ethereal::TransformerWeightSource {
 public:
  explicit FormatWeightSource(std::optional<quant::QuantFormat> format)
      : bf16_source_(0, ethereal::ModelPrecision::bf16()) {
    policy_.format = format;
  }

  LinearLayer linear(const std::string& prefix, std::int64_t out_features,
                     std::int64_t in_features) override {
    const std::optional<quant::QuantFormat> format = policy_.format_of("transformer", prefix);
    if (!format) {
      return bf16_source_.linear(prefix, out_features, in_features);
    }
    const Tensor bias =
        ethereal::random_uniform_matrix(0, prefix + ".bias", 1, out_features, -0.1f, 0.1f)
            .view({out_features});
    const float bound = std::sqrt(3.0f / static_cast<float>(in_features));
    const Tensor weight = ethereal::random_uniform_matrix(0, prefix + ".weight", out_features,
                                                          in_features, -bound, bound);
    return quant::QuantizedLinear(quant::quantize(weight, *format), bias);
  }

  Tensor norm_weight(const std::string& name, std::int64_t length) override {
    return bf16_source_.norm_weight(name, length);
  }

 private:
  ethereal::RandomWeightSource bf16_source_;
  quant::QuantPolicy policy_;
};

QwenImageTransformerConfig bench_config() {
  QwenImageTransformerConfig config;  // the released model's widths
  config.num_layers = kBlocks;
  return config;
}

double process_cpu_seconds() {
  timespec now{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
}

double block_flops(const QwenImageTransformerConfig& config) {
  const double d = static_cast<double>(config.inner_dim());
  const double image = static_cast<double>(kGridSide * kGridSide);
  const double tokens = image + static_cast<double>(kTextTokens);
  return 2.0 * tokens * 12.0 * d * d + 2.0 * 2.0 * d * 6.0 * d + 4.0 * tokens * tokens * d;
}

// The blocks of one format, built on first use. Building another format releases them.
struct FormatBlocks {
  std::string format;
  std::vector<TransformerBlockWeights> blocks;
  double bytes_per_block = 0.0;
};

FormatBlocks& blocks_of(const std::string& format_name) {
  static FormatBlocks cached;
  if (cached.format == format_name) {
    return cached;
  }
  cached = FormatBlocks{};
  std::optional<quant::QuantFormat> format;
  if (format_name != "bf16") {
    format = quant::parse_quant_format(format_name);
  }
  ethereal::Allocator& allocator = ethereal::current_allocator(ethereal::Device::cpu());
  allocator.empty_cache();
  const std::int64_t before = allocator.stats().allocated_bytes.current;
  FormatWeightSource source(format);
  const QwenImageTransformerConfig config = bench_config();
  for (int index = 0; index < kBlocks; ++index) {
    cached.blocks.push_back(ethereal::build_block_weights(source, config, index));
  }
  cached.bytes_per_block =
      static_cast<double>(allocator.stats().allocated_bytes.current - before) / kBlocks;
  cached.format = format_name;
  return cached;
}

Tensor random_activations(std::int64_t rows, std::int64_t columns, const std::string& name) {
  return ethereal::random_uniform_matrix(0, name, rows, columns, -1.0f, 1.0f).to(DType::bf16);
}

// Seconds per block forward of each format (wall, CPU) and bytes per block, for the summary.
struct FormatResult {
  std::vector<double> wall_s;
  std::vector<double> cpu_s;
  double bytes_per_block = 0.0;
};
std::map<std::string, FormatResult>& results() {
  static std::map<std::string, FormatResult> by_format;
  return by_format;
}

const char* const kFormats[] = {"bf16", "fp8_e4m3", "int8", "nf4"};

void BM_BlockForward(benchmark::State& state) {
  const std::string format = kFormats[state.range(0)];
  const FormatBlocks& weights = blocks_of(format);
  const QwenImageTransformerConfig config = bench_config();
  const std::int64_t dim = config.inner_dim();
  const std::vector<ethereal::PatchGrid> grids = {{1, kGridSide, kGridSide}};
  const ethereal::RopeTables rope = ethereal::rope_tables(grids, kTextTokens, config);
  ethereal::BlockContext context;
  context.modulation_input = random_activations(1, dim, "temb");
  context.rope = &rope;
  context.target_tokens = kGridSide * kGridSide;
  context.heads = config.num_attention_heads;
  context.head_dim = config.attention_head_dim;
  const Tensor image_input = random_activations(kGridSide * kGridSide, dim, "img");
  const Tensor text_input = random_activations(kTextTokens, dim, "txt");

  std::int64_t call = 0;
  double wall = 0.0;
  double cpu = 0.0;
  for (auto _ : state) {
    // Fresh copies, because the block updates both streams in place.
    Tensor img = image_input.clone();
    Tensor txt = text_input.clone();
    const double cpu_start = process_cpu_seconds();
    const auto start = std::chrono::steady_clock::now();
    ethereal::run_transformer_block(weights.blocks[call % kBlocks], context, img, txt);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    state.SetIterationTime(seconds);
    wall += seconds;
    cpu += process_cpu_seconds() - cpu_start;
    ++call;
  }
  const double iterations = static_cast<double>(state.iterations());
  FormatResult& result = results()[format];
  result.wall_s.push_back(wall / iterations);
  result.cpu_s.push_back(cpu / iterations);
  result.bytes_per_block = weights.bytes_per_block;

  const double flops = block_flops(config);
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["cpu_GFLOP/s"] =
      flops * 1e-9 * iterations / (cpu / static_cast<double>(ethereal::thread_count()));
  state.counters["weight_MiB_per_block"] = weights.bytes_per_block / (1024.0 * 1024.0);
  state.SetLabel(format);
}
BENCHMARK(BM_BlockForward)
    ->DenseRange(0, 3)
    ->Iterations(kBlocks)
    ->Repetitions(3)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t middle = values.size() / 2;
  return values.size() % 2 == 1 ? values[middle] : 0.5 * (values[middle - 1] + values[middle]);
}

void print_summary() {
  const auto baseline = results().find("bf16");
  if (baseline == results().end()) {
    return;
  }
  const double base_wall = median(baseline->second.wall_s);
  const double base_cpu = median(baseline->second.cpu_s);
  const double base_bytes = baseline->second.bytes_per_block;
  std::printf("\n%-9s %12s %9s %12s %12s %9s %9s\n", "format", "MiB/block", "vs bf16", "s/block",
              "cpu s/block", "wall x", "cpu x");
  for (const char* format : kFormats) {
    const auto found = results().find(format);
    if (found == results().end()) {
      continue;
    }
    const double wall = median(found->second.wall_s);
    const double cpu = median(found->second.cpu_s);
    std::printf("%-9s %12.1f %8.3fx %12.3f %12.3f %8.2fx %8.2fx\n", format,
                found->second.bytes_per_block / (1024.0 * 1024.0),
                found->second.bytes_per_block / base_bytes, wall, cpu, wall / base_wall,
                cpu / base_cpu);
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    return 1;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  print_summary();
  return 0;
}
