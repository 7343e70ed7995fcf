// A checkpoint stored as one safetensors file or as shards listed by an index.
//
// open() accepts:
//   - a safetensors file (any name that does not end in ".json");
//   - an index file (name ending in ".json", usually "<base>.safetensors.index.json") of the
//     form {"metadata": {...}, "weight_map": {"tensor name": "shard file name"}}, with the
//     shards in the same directory as the index;
//   - a directory containing exactly one "*.safetensors.index.json", or no index and exactly
//     one "*.safetensors" file. A directory with several indexes, or several safetensors files
//     and no index, is rejected with a list of the candidates. Such a directory usually
//     contains variants of one model (for example "model.safetensors" and
//     "model.fp16.safetensors"), and picking one silently could load the wrong weights.
//
// Every shard is opened and validated as a SafetensorsFile. The index must list every tensor
// of every shard it names, each in the shard that contains it. A shard name must be a plain
// file name (no directories). Keys of the index other than "metadata" and "weight_map" are
// ignored. Errors are InvalidInputError naming the index or shard, the tensor and the problem.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "io/safetensors.h"

namespace ethereal {

class SafetensorsCheckpoint {
 public:
  static SafetensorsCheckpoint open(const std::filesystem::path& path);

  // The safetensors file or index that was opened (a directory resolves to one of these).
  const std::filesystem::path& path() const { return path_; }
  // Shards sorted by file name; one entry for a single-file checkpoint.
  const std::vector<SafetensorsFile>& files() const { return files_; }
  // Tensor names, shard by shard in files() order, each shard in its file order; this order
  // reads the checkpoint sequentially.
  const std::vector<std::string>& names() const { return names_; }
  bool contains(std::string_view name) const;
  // Throws InvalidInputError naming the checkpoint and suggesting close names when `name` is
  // missing.
  const TensorInfo& info(std::string_view name) const;
  // The shard that contains `name`, for its path and mapping (advise calls use TensorInfo's
  // absolute offsets in that shard's mapping). Throws like info().
  const SafetensorsFile& file_of(std::string_view name) const;
  // A zero-copy, read-only view; see SafetensorsFile::tensor.
  Tensor tensor(std::string_view name) const;
  // The "__metadata__" of a single file, or the "metadata" object of an index with
  // non-string values (such as "total_size") written as their JSON text.
  const SafetensorsMetadata& metadata() const { return metadata_; }
  // Sum of the tensor bytes of all shards.
  std::uint64_t data_bytes() const;

 private:
  SafetensorsCheckpoint() = default;

  static SafetensorsCheckpoint open_single(const std::filesystem::path& path);
  static SafetensorsCheckpoint open_index(const std::filesystem::path& path);
  void build_lookup();

  std::filesystem::path path_;
  std::vector<SafetensorsFile> files_;
  std::vector<std::string> names_;
  std::map<std::string, std::size_t, std::less<>> shard_of_;  // name -> position in files_
  SafetensorsMetadata metadata_;
};

}  // namespace ethereal
