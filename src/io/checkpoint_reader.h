// Reads checkpoint tensors with pread(2) into memory from the current allocator.
//
// The loaders normally view tensors in the file mapping. Streaming blocks during an edit reads
// the same bytes again and again, long after the file was opened, so it reads them with
// pread instead: a file truncated or failing after it was opened then gives a short read or
// an error code, which becomes an IoError naming the file and the tensor. Through the mapping
// the same fault would kill the process with SIGBUS. The copy costs one pass over the bytes,
// which the page cache serves when the file is warm.
//
// Each shard is opened once (its descriptor stays open for the reader's lifetime) and checked
// to have the size of the validated mapping. read() is thread-safe: pread has no shared file
// offset.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "io/safetensors_checkpoint.h"
#include "runtime/tensor.h"

namespace ethereal {

class CheckpointReader {
 public:
  // Opens every shard of `checkpoint`, which must outlive the reader. Throws
  // InvalidInputError when a shard cannot be opened or its size changed since `checkpoint`
  // was opened, IoError for other system failures.
  explicit CheckpointReader(const SafetensorsCheckpoint& checkpoint);
  ~CheckpointReader();

  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;

  // The tensor `name` as stored (dtype and shape of its header entry), contiguous, in new
  // memory from the current allocator. In a dry run the memory is allocated and nothing is
  // read. Throws InvalidInputError for an unknown name or a stored dtype without an engine
  // DType, and IoError for a failed or short read.
  Tensor read(std::string_view name) const;

  // Reads bytes [offset, offset + length) of the shard that holds `tensor` into
  // `destination`. `offset` is absolute in that shard. Throws IoError naming the file and
  // `tensor` when the file ends early or a read fails.
  void read_bytes(std::string_view tensor, std::uint64_t offset, std::uint64_t length,
                  void* destination) const;

  const SafetensorsCheckpoint& checkpoint() const { return checkpoint_; }

 private:
  int descriptor_of(std::string_view tensor) const;

  const SafetensorsCheckpoint& checkpoint_;
  std::vector<int> descriptors_;  // one per checkpoint_.files() entry
};

}  // namespace ethereal
