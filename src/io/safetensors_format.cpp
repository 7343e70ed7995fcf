#include "io/safetensors_format.h"

#include <algorithm>
#include <array>
#include <limits>
#include <set>
#include <string_view>
#include <tuple>

#include <fmt/format.h>

#include "runtime/error.h"

namespace ethereal::safetensors_format {

using nlohmann::json;

namespace {

// Stored element types of the format. Those without an engine DType can be validated and
// sized but not viewed as tensors.
constexpr std::array<StoredDType, 15> kStoredDTypes{{
    {"F64", 8, std::nullopt},
    {"F32", 4, DType::f32},
    {"F16", 2, DType::f16},
    {"BF16", 2, DType::bf16},
    {"F8_E4M3", 1, DType::fp8_e4m3},
    {"F8_E5M2", 1, DType::fp8_e5m2},
    {"I64", 8, DType::int64},
    {"I32", 4, DType::int32},
    {"I16", 2, std::nullopt},
    {"I8", 1, DType::int8},
    {"U64", 8, std::nullopt},
    {"U32", 4, std::nullopt},
    {"U16", 2, std::nullopt},
    {"U8", 1, DType::uint8},
    {"BOOL", 1, std::nullopt},
}};

constexpr std::string_view kMetadataKey = "__metadata__";

std::uint64_t read_u64_little_endian(const std::byte* bytes) {
  std::uint64_t value = 0;
  for (int i = 7; i >= 0; --i) {
    value = (value << 8) | static_cast<std::uint64_t>(bytes[i]);
  }
  return value;
}

// Returns a * b, or nothing when the product does not fit in 64 bits.
std::optional<std::uint64_t> checked_multiply(std::uint64_t a, std::uint64_t b) {
  std::uint64_t product = 0;
  if (__builtin_mul_overflow(a, b, &product)) {
    return std::nullopt;
  }
  return product;
}

// Validates the JSON header of one file. Offsets in TensorInfo are made absolute.
class HeaderParser {
 public:
  HeaderParser(const std::string& source, std::uint64_t data_offset, std::uint64_t data_bytes)
      : source_(source), data_offset_(data_offset), data_bytes_(data_bytes) {}

  Header parse(std::string_view text) const;

 private:
  [[noreturn]] void fail(const std::string& message) const {
    throw InvalidInputError(fmt::format("{}: {}", source_, message));
  }
  [[noreturn]] void fail_tensor(const std::string& name, const std::string& message) const {
    throw InvalidInputError(fmt::format("{}: tensor \"{}\": {}", source_, name, message));
  }

  SafetensorsMetadata parse_metadata(const json& value) const;
  TensorInfo parse_entry(const std::string& name, const json& entry) const;
  const json& require_field(const std::string& name, const json& entry,
                            std::string_view field) const;
  const StoredDType& parse_dtype(const std::string& name, const json& value) const;
  Shape parse_shape(const std::string& name, const json& value) const;
  std::uint64_t byte_count(const std::string& name, const Shape& shape,
                           const StoredDType& dtype) const;
  std::pair<std::uint64_t, std::uint64_t> parse_offsets(const std::string& name,
                                                        const json& value) const;
  void check_tiling(const std::vector<TensorInfo>& tensors) const;

  const std::string& source_;
  std::uint64_t data_offset_;
  std::uint64_t data_bytes_;
};

Header HeaderParser::parse(std::string_view text) const {
  const auto describe_duplicate = [this](const std::vector<std::string>& keys) {
    if (keys.size() == 1) {
      return fmt::format("{}: tensor \"{}\" appears twice in the header; names must be unique",
                         source_, keys[0]);
    }
    if (keys.size() == 2 && keys[0] == kMetadataKey) {
      return fmt::format("{}: __metadata__ key \"{}\" appears twice", source_, keys[1]);
    }
    return fmt::format("{}: tensor \"{}\": field \"{}\" appears twice", source_, keys[0],
                       keys.back());
  };
  const json root =
      parse_json_rejecting_duplicates(text, source_, kLengthPrefixBytes, describe_duplicate);
  if (!root.is_object()) {
    fail("header must be a JSON object mapping tensor names to entries, found " +
         describe_json(root));
  }

  Header header;
  header.data_offset = data_offset_;
  header.data_bytes = data_bytes_;
  for (const auto& [key, value] : root.items()) {
    if (key == kMetadataKey) {
      header.metadata = parse_metadata(value);
    } else {
      header.tensors.push_back(parse_entry(key, value));
    }
  }
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return std::tie(a.data_begin, a.data_end, a.name) <
                     std::tie(b.data_begin, b.data_end, b.name);
            });
  check_tiling(header.tensors);
  return header;
}

SafetensorsMetadata HeaderParser::parse_metadata(const json& value) const {
  if (!value.is_object()) {
    fail("__metadata__ must be an object of string values, found " + describe_json(value));
  }
  SafetensorsMetadata metadata;
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string()) {
      fail(fmt::format("__metadata__ \"{}\" must be a string, found {}", key, describe_json(item)));
    }
    metadata.emplace(key, item.get<std::string>());
  }
  return metadata;
}

TensorInfo HeaderParser::parse_entry(const std::string& name, const json& entry) const {
  if (!entry.is_object()) {
    fail_tensor(name, "entry must be an object with dtype, shape and data_offsets, found " +
                          describe_json(entry));
  }
  for (const auto& [key, value] : entry.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      fail_tensor(
          name,
          fmt::format("unknown field \"{}\"; expected only dtype, shape and data_offsets", key));
    }
  }
  const StoredDType& dtype = parse_dtype(name, require_field(name, entry, "dtype"));
  const Shape shape = parse_shape(name, require_field(name, entry, "shape"));
  const std::uint64_t expected_bytes = byte_count(name, shape, dtype);
  const auto [begin, end] = parse_offsets(name, require_field(name, entry, "data_offsets"));

  if (end - begin != expected_bytes) {
    fail_tensor(name, fmt::format("data_offsets span {} bytes but shape {} with dtype {} needs "
                                  "{} bytes",
                                  end - begin, shape_str(shape), dtype.name, expected_bytes));
  }

  TensorInfo info;
  info.name = name;
  info.stored_dtype = std::string(dtype.name);
  info.dtype = dtype.dtype;
  info.shape = shape;
  info.data_begin = data_offset_ + begin;
  info.data_end = data_offset_ + end;
  return info;
}

const json& HeaderParser::require_field(const std::string& name, const json& entry,
                                        std::string_view field) const {
  const auto found = entry.find(field);
  if (found == entry.end()) {
    fail_tensor(name, fmt::format("missing field \"{}\"", field));
  }
  return *found;
}

const StoredDType& HeaderParser::parse_dtype(const std::string& name, const json& value) const {
  if (!value.is_string()) {
    fail_tensor(name, "dtype must be a string such as \"BF16\", found " + describe_json(value));
  }
  const std::string& text = value.get_ref<const std::string&>();
  const StoredDType* dtype = find_stored_dtype(text);
  if (dtype == nullptr) {
    fail_tensor(
        name, fmt::format("unknown dtype \"{}\"; expected one of {}", text, known_stored_dtypes()));
  }
  return *dtype;
}

Shape HeaderParser::parse_shape(const std::string& name, const json& value) const {
  if (!value.is_array()) {
    fail_tensor(name,
                "shape must be an array of non-negative integers, found " + describe_json(value));
  }
  Shape shape;
  shape.reserve(value.size());
  for (std::size_t axis = 0; axis < value.size(); ++axis) {
    const json& dimension = value[axis];
    if (!dimension.is_number_unsigned()) {
      // nlohmann::json stores every non-negative integer as unsigned, so anything else is a
      // negative integer, a fraction, an integer too large for 64 bits, or not a number.
      fail_tensor(name, fmt::format("shape[{}] is {}; dimensions must be non-negative integers",
                                    axis, describe_json(dimension)));
    }
    const auto size = dimension.get<std::uint64_t>();
    if (size > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      fail_tensor(name, fmt::format("shape[{}] is {}, larger than the maximum dimension {}", axis,
                                    size, std::numeric_limits<std::int64_t>::max()));
    }
    shape.push_back(static_cast<std::int64_t>(size));
  }
  return shape;
}

std::uint64_t HeaderParser::byte_count(const std::string& name, const Shape& shape,
                                       const StoredDType& dtype) const {
  std::uint64_t count = 1;
  for (const std::int64_t size : shape) {
    const auto product = checked_multiply(count, static_cast<std::uint64_t>(size));
    if (!product ||
        *product > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      fail_tensor(name, fmt::format("shape {} has more than 2^63 - 1 elements; the header is "
                                    "corrupt",
                                    shape_str(shape)));
    }
    count = *product;
  }
  const auto bytes = checked_multiply(count, dtype.element_bytes);
  if (!bytes) {
    fail_tensor(name, fmt::format("shape {} with dtype {} needs more than 2^64 bytes; the "
                                  "header is corrupt",
                                  shape_str(shape), dtype.name));
  }
  return *bytes;
}

std::pair<std::uint64_t, std::uint64_t> HeaderParser::parse_offsets(const std::string& name,
                                                                    const json& value) const {
  if (!value.is_array() || value.size() != 2 || !value[0].is_number_unsigned() ||
      !value[1].is_number_unsigned()) {
    fail_tensor(name, "data_offsets must be [begin, end] with two non-negative integers, found " +
                          describe_json(value));
  }
  const auto begin = value[0].get<std::uint64_t>();
  const auto end = value[1].get<std::uint64_t>();
  if (begin > end) {
    fail_tensor(name, fmt::format("data_offsets [{}, {}] have begin after end", begin, end));
  }
  if (end > data_bytes_) {
    fail_tensor(name, fmt::format("data_offsets [{}, {}] end past the data region of {} bytes "
                                  "(file size {}); the file is truncated or the offsets are "
                                  "wrong",
                                  begin, end, data_bytes_, data_offset_ + data_bytes_));
  }
  return {begin, end};
}

// The format requires the tensors to cover the data region exactly, in offset order. Each
// tensor starts where the previous one ends, and the last one ends at the end of the file.
void HeaderParser::check_tiling(const std::vector<TensorInfo>& tensors) const {
  std::uint64_t covered = 0;  // relative offset where the next tensor must start
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& tensor : tensors) {
    const std::uint64_t begin = tensor.data_begin - data_offset_;
    const std::uint64_t end = tensor.data_end - data_offset_;
    if (begin < covered) {
      fail(fmt::format(
          "tensors \"{}\" (data_offsets [{}, {}]) and \"{}\" (data_offsets [{}, "
          "{}]) overlap",
          previous->name, previous->data_begin - data_offset_, covered, tensor.name, begin, end));
    }
    if (begin > covered) {
      fail(
          fmt::format("data bytes [{}, {}) before tensor \"{}\" belong to no tensor; the "
                      "tensors must cover the data region without gaps",
                      covered, begin, tensor.name));
    }
    covered = end;
    previous = &tensor;
  }
  if (covered != data_bytes_) {
    fail(
        fmt::format("the tensors cover {} bytes but the data region has {} bytes; the file has "
                    "trailing bytes or its header is missing a tensor",
                    covered, data_bytes_));
  }
}

// Returns the edit distance between `a` and `b`, or `limit + 1` once it exceeds `limit`.
std::size_t edit_distance(std::string_view a, std::string_view b, std::size_t limit) {
  const std::size_t length_difference =
      a.size() > b.size() ? a.size() - b.size() : b.size() - a.size();
  if (length_difference > limit) {
    return limit + 1;
  }
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) {
    row[j] = j;
  }
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    std::size_t row_minimum = row[0];
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t substitution = diagonal + (a[i - 1] == b[j - 1] ? 0 : 1);
      diagonal = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, substitution});
      row_minimum = std::min(row_minimum, row[j]);
    }
    if (row_minimum > limit) {
      return limit + 1;
    }
  }
  return std::min(row[b.size()], limit + 1);
}

}  // namespace

const StoredDType* find_stored_dtype(std::string_view name) {
  for (const StoredDType& dtype : kStoredDTypes) {
    if (dtype.name == name) {
      return &dtype;
    }
  }
  return nullptr;
}

std::string_view stored_dtype_name(DType dtype) {
  for (const StoredDType& stored : kStoredDTypes) {
    if (stored.dtype == dtype) {
      return stored.name;
    }
  }
  throw InvalidInputError(fmt::format(
      "dtype {} cannot be stored in safetensors; store packed data as uint8 with the byte shape",
      dtype_name(dtype)));
}

std::string known_stored_dtypes(bool loadable_only) {
  std::string names;
  for (const StoredDType& dtype : kStoredDTypes) {
    if (loadable_only && !dtype.dtype) {
      continue;
    }
    if (!names.empty()) {
      names += ", ";
    }
    names += dtype.name;
  }
  return names;
}

Header parse_file(std::span<const std::byte> file, const std::string& source) {
  if (file.size() < kLengthPrefixBytes) {
    throw InvalidInputError(fmt::format(
        "{}: file is {} bytes, shorter than the 8-byte header length that starts a safetensors "
        "file; the file is truncated or not a safetensors file",
        source, file.size()));
  }
  const std::uint64_t header_bytes = read_u64_little_endian(file.data());
  if (header_bytes == 0) {
    throw InvalidInputError(
        fmt::format("{}: header length is 0; a safetensors file needs a JSON header", source));
  }
  if (header_bytes > kMaxHeaderBytes) {
    throw InvalidInputError(fmt::format(
        "{}: header length {} bytes exceeds the limit of {} bytes; the file is corrupt or not a "
        "safetensors file",
        source, header_bytes, kMaxHeaderBytes));
  }
  if (header_bytes > file.size() - kLengthPrefixBytes) {
    throw InvalidInputError(fmt::format(
        "{}: header length {} bytes exceeds the file: 8 + {} bytes needed but the file has {} "
        "bytes; the file is truncated or not a safetensors file",
        source, header_bytes, header_bytes, file.size()));
  }

  const std::uint64_t data_offset = kLengthPrefixBytes + header_bytes;
  const std::string_view text(reinterpret_cast<const char*>(file.data()) + kLengthPrefixBytes,
                              header_bytes);
  const HeaderParser parser(source, data_offset, file.size() - data_offset);
  return parser.parse(text);
}

json parse_json_rejecting_duplicates(std::string_view text, const std::string& source,
                                     std::uint64_t position_base,
                                     const DuplicateKeyMessage& describe_duplicate) {
  // One frame per object being parsed: the keys seen so far and the latest one, which names
  // the value a nested object belongs to.
  struct Frame {
    std::set<std::string, std::less<>> keys;
    std::string latest_key;
  };
  std::vector<Frame> frames;
  const json::parser_callback_t callback = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      frames.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      frames.pop_back();
    } else if (event == json::parse_event_t::key) {
      Frame& frame = frames.back();
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!frame.keys.insert(key).second) {
        std::vector<std::string> path;
        for (std::size_t i = 0; i + 1 < frames.size(); ++i) {
          path.push_back(frames[i].latest_key);
        }
        path.push_back(key);
        throw InvalidInputError(describe_duplicate(path));
      }
      frame.latest_key = key;
    }
    return true;
  };

  // Drops the "[json.exception.<kind>.<id>] " prefix of what().
  const auto strip_id = [](std::string_view what) {
    if (const auto bracket = what.find("] "); bracket != std::string_view::npos) {
      what.remove_prefix(bracket + 2);
    }
    return what;
  };
  try {
    return json::parse(text.begin(), text.end(), callback);
  } catch (const json::parse_error& error) {
    // error.byte counts from 1, and the message gives the 0-based file offset instead.
    const std::uint64_t offset = position_base + (error.byte > 0 ? error.byte - 1 : 0);
    throw InvalidInputError(fmt::format("{}: invalid JSON at file offset {}: {}", source, offset,
                                        strip_id(error.what())));
  } catch (const json::exception& error) {
    // Other parser failures carry no position, such as a number too large for a double.
    throw InvalidInputError(fmt::format("{}: invalid JSON: {}", source, strip_id(error.what())));
  }
}

InvalidInputError missing_tensor_error(const std::string& source, std::string_view name,
                                       const std::vector<std::string>& names) {
  // Allow about one edit per four characters, so short names only match near-identical ones.
  const std::size_t limit = std::max<std::size_t>(1, name.size() / 4);
  std::vector<std::pair<std::size_t, std::string_view>> close;
  for (const std::string& candidate : names) {
    const std::size_t distance = edit_distance(name, candidate, limit);
    if (distance <= limit) {
      close.emplace_back(distance, candidate);
    }
  }
  std::sort(close.begin(), close.end());
  constexpr std::size_t kMaxSuggestions = 3;
  if (close.size() > kMaxSuggestions) {
    close.resize(kMaxSuggestions);
  }

  std::string message =
      fmt::format("{}: tensor \"{}\" not found among its {} tensors", source, name, names.size());
  if (!close.empty()) {
    message += "; did you mean ";
    for (std::size_t i = 0; i < close.size(); ++i) {
      message += fmt::format("{}\"{}\"", i == 0 ? "" : " or ", close[i].second);
    }
    message += "?";
  }
  return InvalidInputError(message);
}

std::string describe_json(const json& value) {
  constexpr std::size_t kMaxText = 60;
  std::string text = value.dump();
  if (text.size() > kMaxText) {
    text = text.substr(0, kMaxText) + "...";
  }
  return fmt::format("{} {}", value.type_name(), text);
}

}  // namespace ethereal::safetensors_format
