// Writer of safetensors files, single or sharded.
//
// Each target is replaced atomically: the bytes go to a temporary file in the target's
// directory ("<target>.tmp.<pid>.<n>"), which is fsynced and renamed over the target only when
// everything succeeded. On any failure the temporary file is removed and an existing target is
// left as it was.
//
// Layout: the JSON header padded with spaces to a multiple of 8 bytes, then the tensors ordered
// by decreasing element size (in the given order within one size). With the 8-byte length
// prefix this puts every tensor at a file offset that is a multiple of its element size, while
// keeping the tensors back to back as the format requires.
//
// Entries can stream their bytes through a callback, so a converter can write a checkpoint
// larger than memory one tensor (or one chunk) at a time.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "io/safetensors.h"
#include "runtime/dtype.h"
#include "runtime/tensor.h"

namespace ethereal {

// Receives the bytes of one tensor while it is written.
class TensorDataSink {
 public:
  virtual ~TensorDataSink() = default;
  // Appends bytes. Throws InvalidInputError when the tensor's declared size would be exceeded.
  virtual void write(std::span<const std::byte> bytes) = 0;
  // Appends `count` zero bytes, with the same size check as write(). The file writers leave
  // them as a hole (the file offset moves on, nothing is written), so on file systems with
  // sparse files they take no disk blocks. This default writes them through write().
  virtual void write_zeros(std::uint64_t count);
};

// One tensor to write: its header fields and a callback that produces its bytes.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  // Writes the tensor's elements in row-major order, dtype_bytes(dtype, numel) bytes in total,
  // in one or more calls. Called once per write, in file order. A wrong byte count is an
  // InvalidInputError naming the tensor; an exception thrown here aborts the write.
  std::function<void(TensorDataSink&)> write_data;
};

// Returns an entry that writes `tensor`, which must be a defined, non-dry CPU tensor of any
// strides and any dtype except packed4. A non-contiguous tensor is copied to contiguous memory
// while it is written.
SafetensorsEntry safetensors_entry(std::string name, Tensor tensor);

// Returns an entry of `dtype` and `shape` whose bytes are all zero, written with
// TensorDataSink::write_zeros. A checkpoint of such entries has its real size but only its
// header takes disk space: a stand-in for weights when only shapes matter (dry runs).
SafetensorsEntry zero_safetensors_entry(std::string name, DType dtype, Shape shape);

// Writes one safetensors file. Names must be unique, non-empty and not "__metadata__".
// Throws InvalidInputError for invalid entries or an unusable target path, IoError when
// writing fails.
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<SafetensorsEntry>& entries,
                       const SafetensorsMetadata& metadata = {});
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const SafetensorsMetadata& metadata = {});

// Writes `entries` into `directory` as shards "<base_name>-00001-of-0000N.safetensors" of at
// most `max_shard_bytes` tensor bytes each. A larger tensor gets a shard of its own, and the
// entries keep their order across shards. The "metadata" of the index
// "<base_name>.safetensors.index.json" contains `metadata` and "total_size" (tensor bytes of
// all shards), and each shard's "__metadata__" contains `metadata`. An index is written even when
// one shard suffices. All files are written to temporary files first and renamed at the end, the
// index last, so a failure while writing leaves the directory as it was. Shards of an earlier write
// with a different shard count stay in the directory, unused by the new index. Returns the index
// path.
std::filesystem::path write_sharded_safetensors(const std::filesystem::path& directory,
                                                std::string_view base_name,
                                                const std::vector<SafetensorsEntry>& entries,
                                                std::uint64_t max_shard_bytes,
                                                const SafetensorsMetadata& metadata = {});

}  // namespace ethereal
