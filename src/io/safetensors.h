// Reader of one safetensors file.
//
// Layout of the format: an 8-byte little-endian header length N, N bytes of JSON header, then
// the data region. The header maps each tensor name to {"dtype", "shape", "data_offsets"}
// (offsets relative to the data region) and may carry "__metadata__", an object of strings.
//
// open() maps the file and validates the whole header before returning, so every later call
// works on checked offsets. It checks sizes and limits, JSON syntax, duplicate keys, each
// entry's fields and shape arithmetic (without overflow). It also checks that the tensors
// tile the data region exactly, with no overlap, gap or trailing bytes. Every failure is an
// InvalidInputError naming the file, the tensor, the field, and the expected and actual
// values. docs/safetensors.md lists the checks and limits.
//
// tensor() returns a zero-copy view into the read-only mapping. Tensor::from_blob takes a
// mutable pointer, but these views must never be written: the pages are mapped PROT_READ and
// a write is a segmentation fault. Copy a view (Tensor::clone) before modifying it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/file_mapping.h"
#include "runtime/dtype.h"
#include "runtime/tensor.h"

namespace ethereal {

// The string-to-string metadata of a safetensors header ("__metadata__").
using SafetensorsMetadata = std::map<std::string, std::string>;

// One validated tensor entry of a safetensors header.
struct TensorInfo {
  std::string name;
  // Element type as written in the header: "BF16", "F8_E4M3", "F64", ...
  std::string stored_dtype;
  // The engine's element type for stored_dtype. Empty for stored types the engine has no
  // DType for (F64, I16, U16, U32, U64, BOOL): such tensors are listed and sized, but
  // tensor() rejects them.
  std::optional<DType> dtype;
  Shape shape;
  // Absolute byte offsets in the file: the tensor's bytes are [data_begin, data_end).
  std::uint64_t data_begin = 0;
  std::uint64_t data_end = 0;

  std::uint64_t nbytes() const { return data_end - data_begin; }
};

class SafetensorsFile {
 public:
  // Maps and validates the file. Throws InvalidInputError for a malformed file, and the
  // errors of FileMapping for a missing or unreadable one.
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return mapping_->path(); }
  // Tensor names in the order of their data in the file, which is the order that reads the
  // file sequentially.
  const std::vector<std::string>& names() const { return names_; }
  // Entries in the same order as names().
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  bool contains(std::string_view name) const;
  // Throws InvalidInputError naming the file and the tensor, with close names as suggestions,
  // when the file has no tensor called `name`.
  const TensorInfo& info(std::string_view name) const;
  const SafetensorsMetadata& metadata() const { return metadata_; }

  // A contiguous view of the tensor's bytes in the mapping; it keeps the mapping alive.
  // Read-only by contract (see the note at the top of this file). The view's address is
  // aligned to the element size only when the file's offsets are: write_safetensors
  // guarantees it, other writers usually but not always do. Throws InvalidInputError for a
  // missing name or a stored dtype without an engine DType.
  Tensor tensor(std::string_view name) const;

  // The mapping, for advise_willneed / advise_dontneed over TensorInfo byte ranges.
  const FileMapping& mapping() const { return *mapping_; }
  const std::shared_ptr<const FileMapping>& shared_mapping() const { return mapping_; }
  // Total bytes of tensor data (the size of the data region).
  std::uint64_t data_bytes() const { return data_bytes_; }

 private:
  SafetensorsFile() = default;

  std::shared_ptr<const FileMapping> mapping_;
  std::vector<TensorInfo> tensors_;
  std::vector<std::string> names_;
  std::map<std::string, std::size_t, std::less<>> index_;  // name -> position in tensors_
  SafetensorsMetadata metadata_;
  std::uint64_t data_bytes_ = 0;
};

}  // namespace ethereal
