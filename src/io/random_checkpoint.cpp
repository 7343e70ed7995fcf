#include "io/random_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <span>
#include <string_view>

#include <fmt/format.h>

#include "io/safetensors_writer.h"
#include "runtime/error.h"
#include "runtime/seeded_random.h"

namespace ethereal {

namespace {

constexpr std::int64_t kChunkElements = 256 * 1024;

bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

}  // namespace

void write_random_checkpoint(const std::filesystem::path& path,
                             const std::vector<std::pair<std::string, Shape>>& tensors,
                             std::uint64_t seed, DType dtype) {
  if (dtype != DType::bf16 && dtype != DType::f16 && dtype != DType::f32) {
    throw InvalidInputError(
        fmt::format("random checkpoint {}: dtype {} is not supported; use bf16, f16 or f32",
                    path.string(), dtype_name(dtype)));
  }
  std::vector<SafetensorsEntry> entries;
  entries.reserve(tensors.size());
  for (std::size_t position = 0; position < tensors.size(); ++position) {
    const auto& [name, shape] = tensors[position];
    float low = 0.9f;
    float high = 1.1f;
    if (shape.size() >= 2) {
      const float bound =
          1.0f / std::sqrt(static_cast<float>(std::max<std::int64_t>(1, shape.back())));
      low = -bound;
      high = bound;
    } else if (ends_with(name, ".bias")) {
      low = -0.05f;
      high = 0.05f;
    }
    SafetensorsEntry entry;
    entry.name = name;
    entry.dtype = dtype;
    entry.shape = shape;
    const std::int64_t count = shape_numel(shape);
    const std::uint64_t stream = seed ^ (0xd1b54a32d192ed03ULL * (position + 1));
    entry.write_data = [count, stream, low, high, dtype](TensorDataSink& sink) {
      std::uint64_t state = stream;
      std::vector<float> values(static_cast<std::size_t>(std::min(count, kChunkElements)));
      std::vector<std::byte> bytes(dtype_bytes(dtype, values.size()));
      for (std::int64_t first = 0; first < count; first += kChunkElements) {
        const auto chunk = static_cast<std::size_t>(std::min(kChunkElements, count - first));
        for (std::size_t i = 0; i < chunk; ++i) {
          values[i] = uniform_from_bits(splitmix64(state), low, high);
        }
        convert_elements(values.data(), DType::f32, bytes.data(), dtype, chunk);
        sink.write(std::span(bytes.data(), dtype_bytes(dtype, chunk)));
      }
    };
    entries.push_back(std::move(entry));
  }
  write_safetensors(path, entries, {{"format", "pt"}});
}

}  // namespace ethereal
