// Sequential offload against resident placement for the Qwen-Image transformer at full width
// (D = 3072, 24 heads of 128, MLP 12288, joint dim 3584). A checkpoint of --blocks blocks of
// seeded random bf16 weights (680 MB per block) is written once under --directory and reused.
//
// One "step" is the transformer work of a denoising step with CFG: two forward passes
// (conditional and negative prompt) over --image-tokens image tokens (target plus one
// reference of the same size, as in an edit) and --text-tokens text tokens. Resident runs
// the blocks loaded once. sequential_offload streams them through one stream for all steps,
// with --kept blocks on the device and a worker thread loading ahead, once from the checkpoint
// (read and packed on every pass) and once from a block cache file written under
// --directory/cache (read already packed).
//
// Phases:
//   1. memory: each placement alone, its peak allocated bytes and the process's peak resident
//      memory (VmHWM, reset through /proc/self/clear_refs) over a load and one step;
//   2. warm page cache: --repeats steps of each, interleaved (resident, checkpoint, cache,
//      resident, ...) so that load from other processes hits all alike;
//   3. cold page cache: --repeats steps of each streamed form, each after
//      posix_fadvise(POSIX_FADV_DONTNEED) drops its file from the page cache, and the plain
//      sequential read bandwidth of the checkpoint from a cold page cache for comparison.
// For the streamed steps it also reports the worker's time per block load and how long the
// computing thread waited for a block. The onload rate is block bytes over load time, which is
// the read bandwidth reached when loads wait for the disk.
//
// Run: OMP_WAIT_POLICY=passive ethereal_placement_bench [--blocks 4] [--image-tokens 2048]
//      [--text-tokens 200] [--kept 2] [--repeats 3] [--threads 0]
//      [--directory /tmp/ethereal-placement-bench]
// Passive waiting makes idle OpenMP threads sleep, so they leave the CPU to the loading worker.
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/random_checkpoint.h"
#include "models/qwen_image/transformer.h"
#include "models/qwen_image/transformer_block_cache.h"
#include "models/reference_models.h"
#include "models/tiny_model.h"
#include "runtime/allocator.h"
#include "runtime/parallel.h"
#include "runtime/system_memory.h"

namespace {

namespace fs = std::filesystem;
using namespace ethereal;
using Clock = std::chrono::steady_clock;

constexpr double kMiB = 1024.0 * 1024.0;

struct Settings {
  int blocks = 4;
  std::int64_t image_tokens = 2048;
  std::int64_t text_tokens = 200;
  int kept = 2;
  int repeats = 3;
  int threads = 0;
  fs::path directory = "/tmp/ethereal-placement-bench";
};

Settings parse_settings(int argc, char** argv) {
  Settings settings;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string option = argv[i];
    const std::string value = argv[i + 1];
    if (option == "--blocks") {
      settings.blocks = std::stoi(value);
    } else if (option == "--image-tokens") {
      settings.image_tokens = std::stoll(value);
    } else if (option == "--text-tokens") {
      settings.text_tokens = std::stoll(value);
    } else if (option == "--kept") {
      settings.kept = std::stoi(value);
    } else if (option == "--repeats") {
      settings.repeats = std::stoi(value);
    } else if (option == "--threads") {
      settings.threads = std::stoi(value);
    } else if (option == "--directory") {
      settings.directory = value;
    } else {
      std::fprintf(stderr, "unknown option %s\n", option.c_str());
      std::exit(2);
    }
  }
  return settings;
}

// The released transformer's configuration with `blocks` blocks.
nlohmann::json full_width_config(int blocks) {
  nlohmann::json config = reference_model_files("qwen-image-edit-2511").transformer_config;
  config["num_layers"] = blocks;
  return config;
}

fs::path ensure_checkpoint(const Settings& settings) {
  fs::create_directories(settings.directory);
  const fs::path path =
      settings.directory / ("blocks-" + std::to_string(settings.blocks) + ".safetensors");
  if (fs::exists(path)) {
    return path;
  }
  std::vector<std::pair<std::string, Shape>> tensors;
  for (const TensorSpec& spec : transformer_tensor_specs(full_width_config(settings.blocks))) {
    tensors.emplace_back(spec.name, spec.shape);
  }
  const auto start = Clock::now();
  write_random_checkpoint(path, tensors, 7);
  std::printf("wrote %s (%.0f MiB) in %.1f s\n", path.c_str(),
              static_cast<double>(fs::file_size(path)) / kMiB,
              std::chrono::duration<double>(Clock::now() - start).count());
  return path;
}

// Target and reference grids of equal size, each image_tokens / 2 tokens.
TransformerInputs make_inputs(const Settings& settings, bool negative) {
  const std::int64_t per_image = settings.image_tokens / 2;
  const auto side = static_cast<std::int64_t>(std::sqrt(static_cast<double>(per_image)));
  const std::int64_t tokens = 2 * side * side;
  std::vector<float> image(static_cast<std::size_t>(tokens * 64));
  std::vector<float> text(static_cast<std::size_t>(settings.text_tokens * 3584));
  for (std::size_t i = 0; i < image.size(); ++i) {
    image[i] = static_cast<float>((i * 37) % 101) / 50.0f - 1.0f;
  }
  for (std::size_t i = 0; i < text.size(); ++i) {
    text[i] = static_cast<float>((i * (negative ? 13 : 11)) % 29) / 14.0f - 1.0f;
  }
  TransformerInputs inputs;
  inputs.hidden_states = Tensor::from_floats(image, {tokens, 64}, DType::bf16);
  inputs.encoder_hidden_states =
      Tensor::from_floats(text, {settings.text_tokens, 3584}, DType::bf16);
  inputs.sigma = 0.7;
  inputs.img_shapes = {{1, side, side}, {1, side, side}};
  return inputs;
}

double cpu_seconds() {
  timespec now{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values.empty() ? 0.0 : values[values.size() / 2];
}

// Resets VmHWM to the current resident size (Linux 4.0+); false when not permitted.
bool reset_peak_rss() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
  return static_cast<bool>(clear);
}

void drop_from_page_cache(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

// Reads the whole file once in 8 MiB chunks; returns MiB/s.
double read_file_mib_per_s(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  std::vector<char> buffer(8 << 20);
  std::uint64_t total = 0;
  const auto start = Clock::now();
  while (true) {
    const ssize_t got = ::read(fd, buffer.data(), buffer.size());
    if (got <= 0) {
      break;
    }
    total += static_cast<std::uint64_t>(got);
  }
  ::close(fd);
  return static_cast<double>(total) / kMiB /
         std::chrono::duration<double>(Clock::now() - start).count();
}

// Block loads and waits seen through residency events.
class StreamStats {
 public:
  // Block loads (seconds and device bytes) and the computing thread's waits for blocks.
  struct Summary {
    std::vector<double> load_seconds;
    std::vector<double> load_bytes;
    double wait_s = 0.0;

    void add(const Summary& other) {
      load_seconds.insert(load_seconds.end(), other.load_seconds.begin(), other.load_seconds.end());
      load_bytes.insert(load_bytes.end(), other.load_bytes.begin(), other.load_bytes.end());
      wait_s += other.wait_s;
    }
    double median_load_s() const { return median(load_seconds); }
    // Device bytes loaded per second of load time.
    double mib_per_s() const {
      double seconds = 0.0;
      double bytes = 0.0;
      for (std::size_t i = 0; i < load_seconds.size(); ++i) {
        seconds += load_seconds[i];
        bytes += load_bytes[i];
      }
      return seconds > 0.0 ? bytes / kMiB / seconds : 0.0;
    }
  };

  ResidencyEventSink sink() {
    return [this](const ResidencyEvent& event) {
      std::lock_guard lock(mutex_);
      if (event.group != kTransformerBlockGroup) {
        return;
      }
      switch (event.kind) {
        case ResidencyEventKind::onload_start: load_start_ = event.time; break;
        case ResidencyEventKind::onload_end:
          summary_.load_seconds.push_back(
              std::chrono::duration<double>(event.time - load_start_).count());
          summary_.load_bytes.push_back(static_cast<double>(event.bytes));
          break;
        case ResidencyEventKind::compute_start:
          if (have_compute_end_) {
            summary_.wait_s += std::chrono::duration<double>(event.time - compute_end_).count();
          }
          break;
        case ResidencyEventKind::compute_end:
          compute_end_ = event.time;
          have_compute_end_ = true;
          break;
        case ResidencyEventKind::offload: break;
      }
    };
  }

  void clear() {
    std::lock_guard lock(mutex_);
    summary_ = Summary();
    have_compute_end_ = false;
  }
  Summary summary() const {
    std::lock_guard lock(mutex_);
    return summary_;
  }

 private:
  mutable std::mutex mutex_;
  Clock::time_point load_start_;
  Clock::time_point compute_end_;
  bool have_compute_end_ = false;
  Summary summary_;
};

struct StepTiming {
  double wall_s = 0.0;
  double cpu_s = 0.0;
};

// One step: both CFG branches through the same stream (null for resident blocks).
StepTiming run_step(const QwenImageTransformer& model, TransformerBlockStream* stream,
                    const TransformerInputs& positive, const TransformerInputs& negative) {
  TransformerForwardOptions options;
  options.block_stream = stream;
  const double cpu_start = cpu_seconds();
  const auto start = Clock::now();
  (void)model.forward(positive, options);
  (void)model.forward(negative, options);
  return {std::chrono::duration<double>(Clock::now() - start).count(), cpu_seconds() - cpu_start};
}

struct MemoryFigures {
  double peak_allocated_mib = 0.0;
  double peak_rss_mib = 0.0;  // above the resident size at the start
  double load_s = 0.0;
};

template <typename Load>
MemoryFigures measure_memory(const Load& load, const TransformerInputs& positive,
                             const TransformerInputs& negative) {
  CpuCachingAllocator allocator;
  const ScopedAllocator scope(allocator);
  const bool rss_reset = reset_peak_rss();
  const auto rss_start = static_cast<double>(read_process_memory().resident_bytes);
  MemoryFigures figures;
  {
    const auto start = Clock::now();
    const QwenImageTransformer model = load();
    figures.load_s = std::chrono::duration<double>(Clock::now() - start).count();
    TransformerBlockStream stream = model.open_block_stream();
    (void)run_step(model, &stream, positive, negative);
  }
  figures.peak_allocated_mib = static_cast<double>(allocator.stats().allocated_bytes.peak) / kMiB;
  figures.peak_rss_mib =
      rss_reset
          ? (static_cast<double>(read_process_memory().peak_resident_bytes) - rss_start) / kMiB
          : -1.0;
  return figures;
}

}  // namespace

int main(int argc, char** argv) {
  const Settings settings = parse_settings(argc, argv);
  set_thread_count(settings.threads);
  const fs::path path = ensure_checkpoint(settings);
  const QwenImageTransformerConfig config =
      QwenImageTransformerConfig::from_json(full_width_config(settings.blocks), "benchmark");
  const TransformerInputs positive = make_inputs(settings, false);
  const TransformerInputs negative = make_inputs(settings, true);
  auto checkpoint =
      std::make_shared<const SafetensorsCheckpoint>(SafetensorsCheckpoint::open(path));
  StreamStats stream_stats;
  TransformerStreamingOptions streaming;
  streaming.kept_blocks = settings.kept;
  streaming.observer = std::make_shared<const ResidencyObserver>(stream_stats.sink());
  auto load_resident = [&] {
    return QwenImageTransformer::load(*checkpoint, config, ModelPrecision::bf16());
  };
  auto load_streamed = [&] {
    return QwenImageTransformer::load_streamed(checkpoint, config, ModelPrecision::bf16(),
                                               identity_tensor_name, {}, streaming);
  };
  // The same blocks from the block cache: packed once, then read straight into place.
  const auto cache_start = Clock::now();
  const std::shared_ptr<TransformerBlockCache> cache =
      TransformerBlockCache::open(checkpoint, identity_tensor_name, {}, config,
                                  ModelPrecision::bf16(), settings.directory / "cache");
  std::printf("block cache %s %s in %.1f s\n", cache->path().c_str(),
              cache->was_written() ? "written" : "reused",
              std::chrono::duration<double>(Clock::now() - cache_start).count());
  auto load_cached = [&] {
    return QwenImageTransformer::load_streamed(checkpoint, config, ModelPrecision::bf16(),
                                               identity_tensor_name, {}, streaming, cache);
  };
  std::printf(
      "threads %d, blocks %d, image tokens %lld, text tokens %lld, kept %d, file %.0f MiB\n",
      thread_count(), settings.blocks, static_cast<long long>(positive.hidden_states.size(0)),
      static_cast<long long>(settings.text_tokens), settings.kept,
      static_cast<double>(fs::file_size(path)) / kMiB);

  // Phase 1: memory of each placement alone.
  (void)read_file_mib_per_s(path);  // warm the page cache
  (void)read_file_mib_per_s(cache->path());
  const MemoryFigures resident_memory = measure_memory(load_resident, positive, negative);
  const MemoryFigures streamed_memory = measure_memory(load_streamed, positive, negative);
  const MemoryFigures cached_memory = measure_memory(load_cached, positive, negative);
  std::printf(
      "\nmemory over a load and one step        peak allocated   peak RSS above start   "
      "load\n");
  auto print_memory = [](const char* name, const MemoryFigures& figures) {
    std::printf("  %-36s %9.0f MiB   %9.0f MiB          %5.1f s\n", name,
                figures.peak_allocated_mib, figures.peak_rss_mib, figures.load_s);
  };
  print_memory("resident", resident_memory);
  print_memory("sequential_offload, checkpoint", streamed_memory);
  print_memory("sequential_offload, block cache", cached_memory);

  // Phase 2: warm page cache, steps interleaved.
  const QwenImageTransformer resident = load_resident();
  const QwenImageTransformer streamed = load_streamed();
  const QwenImageTransformer cached = load_cached();
  TransformerBlockStream stream = streamed.open_block_stream();
  TransformerBlockStream cached_stream = cached.open_block_stream();
  (void)run_step(resident, nullptr, positive, negative);  // first calls create oneDNN primitives
  (void)run_step(streamed, &stream, positive, negative);
  (void)run_step(cached, &cached_stream, positive, negative);
  std::vector<double> resident_wall, resident_cpu, streamed_wall, streamed_cpu, cached_wall,
      cached_cpu;
  StreamStats::Summary warm;
  StreamStats::Summary warm_cached;
  std::printf("\nwarm page cache, interleaved steps\n");
  for (int r = 0; r < settings.repeats; ++r) {
    const StepTiming a = run_step(resident, nullptr, positive, negative);
    stream_stats.clear();
    const StepTiming b = run_step(streamed, &stream, positive, negative);
    warm.add(stream_stats.summary());
    stream_stats.clear();
    const StepTiming c = run_step(cached, &cached_stream, positive, negative);
    warm_cached.add(stream_stats.summary());
    resident_wall.push_back(a.wall_s);
    resident_cpu.push_back(a.cpu_s);
    streamed_wall.push_back(b.wall_s);
    streamed_cpu.push_back(b.cpu_s);
    cached_wall.push_back(c.wall_s);
    cached_cpu.push_back(c.cpu_s);
    std::printf(
        "  repeat %d: resident %.2f s, checkpoint %.2f s (%.3fx), block cache %.2f s "
        "(%.3fx)\n",
        r, a.wall_s, b.wall_s, b.wall_s / a.wall_s, c.wall_s, c.wall_s / a.wall_s);
  }

  // Phase 3: cold page cache.
  std::vector<double> cold_wall, cold_cached_wall;
  StreamStats::Summary cold;
  StreamStats::Summary cold_cached;
  for (int r = 0; r < settings.repeats; ++r) {
    drop_from_page_cache(path);
    stream_stats.clear();
    cold_wall.push_back(run_step(streamed, &stream, positive, negative).wall_s);
    cold.add(stream_stats.summary());
    drop_from_page_cache(cache->path());
    stream_stats.clear();
    cold_cached_wall.push_back(run_step(cached, &cached_stream, positive, negative).wall_s);
    cold_cached.add(stream_stats.summary());
  }
  drop_from_page_cache(path);
  const double disk_bandwidth = read_file_mib_per_s(path);

  const double resident_step = median(resident_wall);
  std::printf(
      "\nstep (2 forward passes), median of %d   wall      cpu       ratio   block load   "
      "onload rate   wait per step\n",
      settings.repeats);
  std::printf("  %-36s %6.2f s  %6.2f s   1.000\n", "resident", resident_step,
              median(resident_cpu));
  auto print_row = [&](const char* name, const std::vector<double>& wall,
                       const std::vector<double>* cpu, const StreamStats::Summary& stats) {
    std::printf("  %-36s %6.2f s  %6.2f s   %5.3f   %6.3f s   %6.0f MiB/s   %6.2f s\n", name,
                median(wall), cpu != nullptr ? median(*cpu) : 0.0, median(wall) / resident_step,
                stats.median_load_s(), stats.mib_per_s(), stats.wait_s / settings.repeats);
  };
  print_row("sequential, checkpoint, warm", streamed_wall, &streamed_cpu, warm);
  print_row("sequential, block cache, warm", cached_wall, &cached_cpu, warm_cached);
  print_row("sequential, checkpoint, cold", cold_wall, nullptr, cold);
  print_row("sequential, block cache, cold", cold_cached_wall, nullptr, cold_cached);
  std::printf("  plain sequential read of the file, cold cache: %.0f MiB/s\n", disk_bandwidth);
  return 0;
}
