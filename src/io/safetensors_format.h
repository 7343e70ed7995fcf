// Parts of the safetensors format shared by the reader, the sharded checkpoint and the writer:
// the table of stored element types, header validation over a byte buffer, strict JSON
// parsing, and the "tensor not found" message. Used only inside src/io and by the fuzz
// target; model code uses safetensors.h and safetensors_checkpoint.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "runtime/dtype.h"
#include "runtime/error.h"

namespace ethereal::safetensors_format {

// Largest header (and index file) accepted, in bytes. The reference implementation's limit is
// 100,000,000 bytes; a header this size already describes millions of tensors.
inline constexpr std::uint64_t kMaxHeaderBytes = 100ull * 1024 * 1024;
// Bytes of the little-endian header length at the start of the file.
inline constexpr std::uint64_t kLengthPrefixBytes = 8;

// A stored element type and its engine counterpart, if any.
struct StoredDType {
  std::string_view name;  // as written in headers: "BF16"
  std::size_t element_bytes;
  std::optional<DType> dtype;
};

// Returns the entry for `name`, or nullptr for a name the format table does not contain.
const StoredDType* find_stored_dtype(std::string_view name);
// Returns the stored name for an engine dtype. Throws InvalidInputError for packed4, which has
// no safetensors type: store packed bytes as uint8 with the byte shape instead.
std::string_view stored_dtype_name(DType dtype);
// Returns the known stored names, comma separated, for error messages; with `loadable_only`
// only those that have an engine DType.
std::string known_stored_dtypes(bool loadable_only = false);

// The validated contents of a safetensors header.
struct Header {
  std::vector<TensorInfo> tensors;  // ordered by data_begin, then data_end, then name
  SafetensorsMetadata metadata;
  std::uint64_t data_offset = 0;  // absolute file offset of the data region
  std::uint64_t data_bytes = 0;   // size of the data region
};

// Validates a whole safetensors file held in memory and returns its header. `source` names
// the file in error messages. Throws InvalidInputError describing the first problem found.
Header parse_file(std::span<const std::byte> file, const std::string& source);

// Receives the key path of a duplicated key (enclosing keys first, the duplicated key last)
// and returns the error message.
using DuplicateKeyMessage = std::function<std::string(const std::vector<std::string>& keys)>;

// Parses JSON text, rejecting any object with a key that appears twice (nlohmann::json would
// silently keep the last value). A syntax error becomes an InvalidInputError that starts with
// `source` and gives the byte position plus `position_base`, so callers can report file
// offsets. A duplicate key becomes an InvalidInputError with the message from
// `describe_duplicate`.
nlohmann::json parse_json_rejecting_duplicates(std::string_view text, const std::string& source,
                                               std::uint64_t position_base,
                                               const DuplicateKeyMessage& describe_duplicate);

// Returns the error for a tensor name that `source` does not contain, suggesting the closest
// of `names` (by edit distance) when any is close.
InvalidInputError missing_tensor_error(const std::string& source, std::string_view name,
                                       const std::vector<std::string>& names);

// Returns a short description of a JSON value for messages: its type and (shortened) text.
std::string describe_json(const nlohmann::json& value);

}  // namespace ethereal::safetensors_format
