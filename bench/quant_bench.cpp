// Quantised linear layers (fp8_e4m3, nf4, int8) against the bf16 linear layer, the cost of
// dequantising into oneDNN's packed layout, the machine's streaming read bandwidth and bf16
// matmul rate, and the round-trip error of each format.
//
// Linear benchmarks: x [M, K] bf16 -> y [M, N] bf16 with a bias, for the transformer's shapes
// K = N = 3072 and K = 3072, N = 12288. They run M = 1, 2, 4, 8, 16, 32, 48 and 64 rows (the
// direct path) and 1024 and 4096 rows (dequantise + matmul). Each quantised benchmark times its
// own forward pass and, in the same iteration, the bf16 PackedLinear's forward pass on the same
// shape. It reports vs_bf16 = (its time) / (bf16 time). Interleaving the two keeps the ratio
// meaningful on a machine whose load changes during the run. The families LinearFp8Panels etc.
// force the dequantise + matmul path, and LinearFp8Direct etc. force the direct path. They run
// 16 to 256 rows to compare the two paths around the row limit that picks between them.
//
// vs_bf16_cpu is the same ratio in process CPU time (all threads). On a shared machine it is
// less affected by the CPU share the process gets. OpenMP threads that spin while waiting count
// as busy, so run with OMP_WAIT_POLICY=passive when comparing CPU time.
//
// Below kRotationRows rows the weights would stay in the 32 MiB L3 cache between iterations.
// So these benchmarks cycle through enough copies of the layer (at least 256 MiB of weights)
// that every call reads its weights from memory, as one denoising step does. They report
// weight_GB/s (weight bytes read per second) and pct_of_bandwidth, weight_GB/s as a percentage
// of the read bandwidth (see the roofline below).
//
// On a shared machine the load during the fastest read differs from the load during a later
// benchmark, so these benchmarks also report pct_of_read. Right after the forward pass, each
// iteration times a plain streaming read of the same number of bytes. That read runs on all
// threads and reads a separate 256 MiB buffer. pct_of_read is the read's time over the forward
// pass's time, in percent.
//
// Roofline: every linear benchmark reports pct_of_roofline = 100 * (lower bound) / (its time).
// The lower bound is max(weight bytes / bandwidth, 2 M K N / bf16 rate). The benchmark also
// reports the two references as ref_GB/s and ref_GFLOP/s. The bandwidth is the fastest read of
// the run so far, from StreamingRead's iterations and the reads interleaved with the linear
// benchmarks. The bf16 rate is the fastest bf16 matmul so far, from Bf16MatmulRate (the bf16
// PackedLinear at 1024 x 3072 x 3072) and the bf16 forward passes of the linear benchmarks. On
// a loaded machine this makes the percentages of later benchmarks conservative rather than
// above 100. Run the two reference benchmarks first (they are registered first) and keep them
// in any --benchmark_filter.
//
// Suggested command (quote medians):
//   OMP_WAIT_POLICY=passive ethereal_quant_bench --benchmark_repetitions=5
//   --benchmark_report_aggregates_only=true (one line)
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu/linear.h"
#include "quant/packed_dequant.h"
#include "quant/quantize.h"
#include "quant/quantized_linear.h"
#include "runtime/parallel.h"
#include "runtime/tensor.h"

namespace ethereal::quant {
namespace {

using Clock = std::chrono::steady_clock;

using Path = QuantizedLinearOptions::Path;

constexpr std::int64_t kRotationBytes = std::int64_t{256} << 20;
constexpr std::int64_t kStreamBytes = std::int64_t{512} << 20;
// Benchmarks with fewer rows cycle through copies of the layer (see the file comment).
constexpr std::int64_t kRotationRows = 512;

// Streaming read bandwidth in bytes per second: one entry per StreamingRead iteration and per
// read that the linear benchmarks interleave with their forward passes.
std::vector<double> stream_rates;
// bf16 matmul rate in FLOP per second: one entry per Bf16MatmulRate iteration and per bf16
// forward pass of the linear benchmarks.
std::vector<double> matmul_rates;

double fastest(const std::vector<double>& rates) {
  return rates.empty() ? 0.0 : *std::max_element(rates.begin(), rates.end());
}

// The machine's read bandwidth: the fastest read of the run so far, the one least disturbed by
// other processes.
double measured_bandwidth() {
  return fastest(stream_rates);
}

// The bf16 matmul rate: the fastest bf16 matmul of the run so far.
double measured_matmul_rate() {
  return fastest(matmul_rates);
}

// Normal weights with standard deviation 0.02 (a cheap seeded generator per row, in parallel).
Tensor normal_weight(std::int64_t n, std::int64_t k, std::uint32_t seed) {
  Tensor weight = Tensor::empty({n, k}, DType::f32);
  float* data = weight.data_as<float>();
  parallel_for(0, n, 16, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t row = begin; row < end; ++row) {
      std::mt19937 generator(seed * 1000003u + static_cast<std::uint32_t>(row));
      std::normal_distribution<float> distribution(0.0f, 0.02f);
      for (std::int64_t i = 0; i < k; ++i) {
        data[row * k + i] = distribution(generator);
      }
    }
  });
  return weight;
}

// The normal weight with Student-t (3 degrees of freedom) tails and an outlier of 0.8 about
// every 500 values.
Tensor heavy_tailed_weight(std::int64_t n, std::int64_t k, std::uint32_t seed) {
  Tensor weight = Tensor::empty({n, k}, DType::f32);
  float* data = weight.data_as<float>();
  parallel_for(0, n, 16, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t row = begin; row < end; ++row) {
      std::mt19937 generator(seed * 1000003u + static_cast<std::uint32_t>(row));
      std::student_t_distribution<float> distribution(3.0f);
      std::uniform_int_distribution<int> outlier(0, 499);
      for (std::int64_t i = 0; i < k; ++i) {
        float value = 0.02f * distribution(generator);
        if (outlier(generator) == 0) {
          value = value >= 0.0f ? 0.8f : -0.8f;
        }
        data[row * k + i] = value;
      }
    }
  });
  return weight;
}

Tensor uniform_tensor(const Shape& shape, DType dtype, std::uint32_t seed) {
  std::vector<float> values(static_cast<std::size_t>(shape_numel(shape)));
  std::mt19937 generator(seed);
  std::uniform_real_distribution<float> distribution(-1.0f, 1.0f);
  for (float& value : values) {
    value = distribution(generator);
  }
  return Tensor::from_floats(values, shape, dtype);
}

QuantizedWeight clone_weight(const QuantizedWeight& weight) {
  QuantizedWeight copy = weight;
  for (Tensor* part : {&copy.values, &copy.scales, &copy.nf4.absmax_codes, &copy.nf4.group_scales,
                       &copy.nf4.code_map}) {
    if (part->defined()) {
      *part = part->clone();
    }
  }
  return copy;
}

// Sum of `count` 64-bit words (count a multiple of 32), read with four independent vector
// accumulators so that the loop is limited by memory, not by the addition chain.
std::uint64_t sum_words(const std::uint64_t* words, std::int64_t count) {
#if defined(__AVX512F__)
  __m512i sums[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                     _mm512_setzero_si512()};
  for (std::int64_t i = 0; i < count; i += 32) {
    for (int j = 0; j < 4; ++j) {
      sums[j] = _mm512_add_epi64(sums[j], _mm512_loadu_si512(words + i + 8 * j));
    }
  }
  alignas(64) std::uint64_t lanes[8];
  _mm512_store_si512(lanes, _mm512_add_epi64(_mm512_add_epi64(sums[0], sums[1]),
                                             _mm512_add_epi64(sums[2], sums[3])));
  std::uint64_t total = 0;
  for (std::uint64_t lane : lanes) {
    total += lane;
  }
  return total;
#else
  std::uint64_t total = 0;
  for (std::int64_t i = 0; i < count; ++i) {
    total += words[i];
  }
  return total;
#endif
}

// Reads a 512 MiB buffer on all threads, in 64 chunks of 8 MiB.
void run_streaming_read(benchmark::State& state) {
  const Tensor buffer = Tensor::empty({kStreamBytes}, DType::uint8);
  std::memset(buffer.data(), 1, static_cast<std::size_t>(kStreamBytes));
  const auto* words = buffer.data_as<const std::uint64_t>();
  const std::int64_t chunks = 64;
  const std::int64_t chunk_words = kStreamBytes / 8 / chunks;
  std::vector<std::uint64_t> sums(static_cast<std::size_t>(chunks));
  for (auto _ : state) {
    const auto start = Clock::now();
    parallel_for(0, chunks, 1, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t c = begin; c < end; ++c) {
        sums[static_cast<std::size_t>(c)] = sum_words(words + c * chunk_words, chunk_words);
      }
    });
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    state.SetIterationTime(seconds);
    stream_rates.push_back(static_cast<double>(kStreamBytes) / seconds);
    benchmark::DoNotOptimize(sums.data());
  }
  state.counters["GB/s"] = benchmark::Counter(static_cast<double>(kStreamBytes) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
}

// The bf16 PackedLinear on 1024 x 3072 x 3072 (the rate the large-batch path is compared
// with), for the roofline of the linear benchmarks.
void run_bf16_matmul_rate(benchmark::State& state) {
  const std::int64_t rows = 1024, k = 3072, n = 3072;
  const cpu::PackedLinear layer(normal_weight(n, k, 1).to(DType::bf16),
                                uniform_tensor({n}, DType::bf16, 2));
  const Tensor x = uniform_tensor({rows, k}, DType::bf16, 3);
  const double flop = 2.0 * static_cast<double>(rows * k * n);
  for (auto _ : state) {
    const auto start = Clock::now();
    Tensor y = layer.forward(x);
    benchmark::DoNotOptimize(y.storage()->data());
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    state.SetIterationTime(seconds);
    matmul_rates.push_back(flop / seconds);
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(flop * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// Plain streaming reads of a given number of bytes, from a rotating offset in a 256 MiB buffer
// so that they come from memory, like the layers' weights.
class ReadBuffer {
 public:
  ReadBuffer() : buffer_(Tensor::empty({kRotationBytes}, DType::uint8)), sums_(kChunks) {
    std::memset(buffer_.data(), 1, static_cast<std::size_t>(kRotationBytes));
  }

  // Reads `bytes` (rounded down to whole 256-byte blocks per chunk) on all threads, records the
  // rate in stream_rates and returns the wall-clock seconds.
  double read(std::int64_t bytes) {
    const std::int64_t chunk_words = bytes / 8 / kChunks / 32 * 32;
    const std::int64_t total = chunk_words * 8 * kChunks;
    if (offset_ + total > kRotationBytes) {
      offset_ = 0;
    }
    const auto* words = buffer_.data_as<const std::uint64_t>() + offset_ / 8;
    offset_ += total;
    const auto start = Clock::now();
    parallel_for(0, kChunks, 1, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t c = begin; c < end; ++c) {
        sums_[static_cast<std::size_t>(c)] = sum_words(words + c * chunk_words, chunk_words);
      }
    });
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    benchmark::DoNotOptimize(sums_.data());
    stream_rates.push_back(static_cast<double>(total) / seconds);
    return seconds;
  }

 private:
  static constexpr std::int64_t kChunks = 8;
  Tensor buffer_;
  std::vector<std::uint64_t> sums_;
  std::int64_t offset_ = 0;
};

// One layer in the formats compared: the bf16 PackedLinear and, unless `format` is null, the
// quantised layer built from the same f32 weight.
struct LayerCopies {
  std::vector<cpu::PackedLinear> bf16;
  std::vector<QuantizedLinear> quantized;
  std::size_t quantized_bytes = 0;
};

LayerCopies make_layers(const std::optional<QuantFormat>& format, Path path, std::int64_t rows,
                        std::int64_t k, std::int64_t n) {
  const Tensor weight = normal_weight(n, k, 1);
  const Tensor bias = uniform_tensor({n}, DType::bf16, 2);
  const QuantizedLinearOptions options{.path = path};
  LayerCopies layers;
  layers.bf16.emplace_back(weight.to(DType::bf16), bias);
  if (format) {
    layers.quantized.emplace_back(quantize(weight, *format), bias, options);
    layers.quantized_bytes = layers.quantized.front().weight().nbytes();
  }
  if (rows < kRotationRows) {
    const std::int64_t bf16_bytes = n * k * 2;
    for (std::int64_t total = bf16_bytes; total < kRotationBytes; total += bf16_bytes) {
      layers.bf16.emplace_back(weight.to(DType::bf16), bias);
    }
    if (format) {
      const auto bytes = static_cast<std::int64_t>(layers.quantized_bytes);
      for (std::int64_t total = bytes; total < kRotationBytes; total += bytes) {
        layers.quantized.emplace_back(clone_weight(layers.quantized.front().weight()), bias,
                                      options);
      }
    }
  }
  return layers;
}

double process_cpu_seconds() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) * 1e-9;
}

// Wall-clock and process CPU time (all threads) of one call.
struct Times {
  double wall = 0.0;
  double cpu = 0.0;

  Times& operator+=(const Times& other) {
    wall += other.wall;
    cpu += other.cpu;
    return *this;
  }
};

template <typename Layer>
Times time_forward(const Layer& layer, const Tensor& x) {
  const auto start = Clock::now();
  const double cpu_start = process_cpu_seconds();
  Tensor y = layer.forward(x);
  benchmark::DoNotOptimize(y.storage()->data());
  return {std::chrono::duration<double>(Clock::now() - start).count(),
          process_cpu_seconds() - cpu_start};
}

// Lower bound on the time of a linear layer that reads `weight_bytes` and computes `flop`: the
// larger of the read at the measured bandwidth and the matmul at the measured bf16 rate. 0 when
// a reference benchmark did not run.
double roofline_seconds(double weight_bytes, double flop) {
  if (stream_rates.empty() || matmul_rates.empty()) {
    return 0.0;
  }
  return std::max(weight_bytes / measured_bandwidth(), flop / measured_matmul_rate());
}

// Linear layer of M x K by K x N in `format` (bf16 when null) on `path`, timed by hand. The
// quantised forward is the benchmark's time, and the interleaved bf16 forward only feeds the
// ratios.
void run_linear(benchmark::State& state, std::optional<QuantFormat> format, Path path) {
  const std::int64_t rows = state.range(0), k = state.range(1), n = state.range(2);
  LayerCopies layers = make_layers(format, path, rows, k, n);
  const Tensor x = uniform_tensor({rows, k}, DType::bf16, 3);
  const double weight_bytes =
      format ? static_cast<double>(layers.quantized_bytes) : 2.0 * static_cast<double>(n * k);
  const bool from_memory = rows < kRotationRows;
  // Created on first use, for the benchmarks that read their weights from memory, and kept for
  // the others.
  static std::optional<ReadBuffer> read_buffer;
  if (from_memory && !read_buffer) {
    read_buffer.emplace();
  }
  const double flop = 2.0 * static_cast<double>(rows) * static_cast<double>(k) * n;
  std::size_t next_bf16 = 0, next_quantized = 0;
  Times bf16_total, quantized_total;
  double read_total = 0.0;
  for (auto _ : state) {
    const Times bf16 = time_forward(layers.bf16[next_bf16++ % layers.bf16.size()], x);
    bf16_total += bf16;
    matmul_rates.push_back(flop / bf16.wall);
    double seconds = bf16.wall;
    if (format) {
      const Times quantized =
          time_forward(layers.quantized[next_quantized++ % layers.quantized.size()], x);
      quantized_total += quantized;
      seconds = quantized.wall;
    }
    if (from_memory) {
      read_total += read_buffer->read(static_cast<std::int64_t>(weight_bytes));
    }
    state.SetIterationTime(seconds);
  }

  state.counters["GFLOP/s"] =
      benchmark::Counter(flop * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  if (format) {
    state.counters["vs_bf16"] = quantized_total.wall / bf16_total.wall;
    state.counters["vs_bf16_cpu"] = quantized_total.cpu / bf16_total.cpu;
  }
  const double seconds = format ? quantized_total.wall : bf16_total.wall;
  const double iterations = static_cast<double>(state.iterations());
  if (const double bound = roofline_seconds(weight_bytes, flop); bound > 0.0) {
    state.counters["pct_of_roofline"] = 100.0 * bound * iterations / seconds;
    state.counters["ref_GB/s"] = measured_bandwidth() * 1e-9;
    state.counters["ref_GFLOP/s"] = measured_matmul_rate() * 1e-9;
  }
  if (from_memory) {
    const double rate = weight_bytes * iterations / seconds;
    state.counters["weight_GB/s"] = rate * 1e-9;
    state.counters["pct_of_read"] = 100.0 * read_total / seconds;
    if (!stream_rates.empty()) {
      state.counters["pct_of_bandwidth"] = 100.0 * rate / measured_bandwidth();
    }
  }
}

// Dequantising a whole [N, K] weight into oneDNN's packed bf16 layout.
void run_dequantize_to_packed(benchmark::State& state, QuantFormat format) {
  const std::int64_t k = state.range(0), n = state.range(1);
  const QuantizedWeight weight = quantize(normal_weight(n, k, 4), format);
  const cpu::PackedLinear target = cpu::PackedLinear::allocate(n, k, DType::bf16);
  for (auto _ : state) {
    dequantize_to_packed(weight, 0, target.layout(), target.packed_weight().data());
    benchmark::ClobberMemory();
  }
  // Inverted rate of n * k * 1e-9 weights per iteration: nanoseconds per weight.
  state.counters["ns/weight"] = benchmark::Counter(
      static_cast<double>(n * k) * 1e-9,
      benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  state.counters["fast_path"] = has_fast_packed_path(target.layout()) ? 1 : 0;
}

// Round-trip error of a 3072 x 3072 weight: RMS error over RMS weight, and the largest error
// over the largest weight.
void run_round_trip_error(benchmark::State& state, QuantFormat format, ScaleGranularity fp8_scales,
                          bool heavy_tailed) {
  const std::int64_t n = 3072, k = 3072;
  const Tensor weight = heavy_tailed ? heavy_tailed_weight(n, k, 5) : normal_weight(n, k, 5);
  Tensor restored;
  for (auto _ : state) {
    restored = dequantize(quantize(weight, format, {.fp8_scales = fp8_scales}));
  }
  const float* original = weight.data_as<const float>();
  const float* decoded = restored.data_as<const float>();
  double squared_error = 0.0, squared_weight = 0.0, max_error = 0.0, max_weight = 0.0;
  for (std::int64_t i = 0; i < n * k; ++i) {
    const double error = std::fabs(static_cast<double>(original[i]) - decoded[i]);
    squared_error += error * error;
    squared_weight += static_cast<double>(original[i]) * original[i];
    max_error = std::max(max_error, error);
    max_weight = std::max(max_weight, std::fabs(static_cast<double>(original[i])));
  }
  state.counters["rms_error/rms_weight"] = std::sqrt(squared_error / squared_weight);
  state.counters["max_error/max_weight"] = max_error / max_weight;
}

void register_benchmarks() {
  // The two references of the roofline, first.
  benchmark::RegisterBenchmark("StreamingRead", run_streaming_read)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("Bf16MatmulRate", run_bf16_matmul_rate)
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);

  const std::pair<const char*, std::optional<QuantFormat>> formats[] = {
      {"Bf16", std::nullopt},
      {"Fp8", QuantFormat::fp8_e4m3},
      {"Nf4", QuantFormat::nf4},
      {"Int8", QuantFormat::int8}};
  const auto register_linear = [](const std::string& label, std::optional<QuantFormat> format,
                                  Path path, std::vector<std::int64_t> rows) {
    benchmark::RegisterBenchmark(label.c_str(), run_linear, format, path)
        ->ArgNames({"M", "K", "N"})
        ->ArgsProduct({std::move(rows), {3072}, {3072, 12288}})
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  };
  for (const auto& [name, format] : formats) {
    register_linear(std::string("Linear") + name, format, Path::automatic,
                    {1, 2, 4, 8, 16, 32, 48, 64, 1024, 4096});
  }
  // Each path forced, around the row limit that picks between them.
  for (const auto& [name, format] : formats) {
    if (format) {
      register_linear(std::string("Linear") + name + "Panels", format, Path::dequantize_matmul,
                      {16, 32, 48, 64, 96, 128, 192, 256});
      register_linear(std::string("Linear") + name + "Direct", format, Path::direct,
                      {64, 96, 128, 192, 256});
    }
  }

  for (const auto& [name, format] : formats) {
    if (!format) {
      continue;
    }
    benchmark::RegisterBenchmark((std::string("DequantizeToPacked") + name).c_str(),
                                 run_dequantize_to_packed, *format)
        ->ArgNames({"K", "N"})
        ->Args({3072, 3072})
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }

  const std::tuple<const char*, QuantFormat, ScaleGranularity> error_cases[] = {
      {"Fp8PerChannel", QuantFormat::fp8_e4m3, ScaleGranularity::per_channel},
      {"Fp8PerTensor", QuantFormat::fp8_e4m3, ScaleGranularity::per_tensor},
      {"Nf4", QuantFormat::nf4, ScaleGranularity::per_channel},
      {"Int8", QuantFormat::int8, ScaleGranularity::per_channel}};
  for (const auto& [name, format, scales] : error_cases) {
    for (const bool heavy : {false, true}) {
      const std::string label =
          std::string("RoundTripError") + name + (heavy ? "/heavy_tailed" : "/normal");
      benchmark::RegisterBenchmark(label.c_str(), run_round_trip_error, format, scales, heavy)
          ->Iterations(1)
          ->Repetitions(1)
          ->Unit(benchmark::kMillisecond);
    }
  }
}

}  // namespace
}  // namespace ethereal::quant

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    return 2;
  }
  ethereal::quant::register_benchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
