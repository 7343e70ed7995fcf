// SafetensorsFile: round trips through write_safetensors, zero-copy views, and malformed files
// that must each fail with a precise message.

#include "io/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "io/safetensors_format.h"
#include "io/safetensors_writer.h"
#include "runtime/error.h"
#include "safetensors_test_util.h"
#include "support/errors.h"

namespace ethereal {
namespace {

using test_support::error_message;
using test_support::TemporaryDirectory;
using test_support::write_file;
using ::testing::HasSubstr;
using ::testing::Not;
using testing_util::little_endian_u64;
using testing_util::write_raw_safetensors;

// Values that every supported dtype represents exactly: small integers and halves.
std::vector<float> exact_values(std::size_t count, bool allow_negative) {
  std::vector<float> values(count);
  for (std::size_t i = 0; i < count; ++i) {
    const float magnitude = static_cast<float>(i % 7) + (i % 2 == 0 ? 0.0f : 0.5f);
    values[i] = (allow_negative && i % 3 == 1) ? -magnitude : magnitude;
  }
  return values;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  const Tensor left = a.contiguous();
  const Tensor right = b.contiguous();
  return left.nbytes() == right.nbytes() &&
         std::memcmp(left.data(), right.data(), left.nbytes()) == 0;
}

TEST(SafetensorsFile, RoundTripsEveryEngineDtype) {
  TemporaryDirectory directory;
  const std::vector<DType> dtypes = {DType::f32,      DType::bf16,     DType::f16,
                                     DType::fp8_e4m3, DType::fp8_e5m2, DType::int8,
                                     DType::uint8,    DType::int32,    DType::int64};
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const DType dtype : dtypes) {
    const bool is_signed = dtype != DType::uint8;
    const bool is_integer = !dtype_is_float(dtype);
    std::vector<float> values = exact_values(3 * 5, is_signed);
    if (is_integer) {
      for (float& value : values) {
        value = static_cast<float>(static_cast<int>(value));
      }
    }
    tensors.emplace_back(std::string("t_") + std::string(dtype_name(dtype)),
                         Tensor::from_floats(values, {3, 5}, dtype));
  }
  const auto path = directory / "all.safetensors";
  write_safetensors(path, tensors, {{"format", "pt"}, {"source", "unit test"}});

  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.names().size(), dtypes.size());
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.metadata().at("source"), "unit test");
  for (const auto& [name, source] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(file.contains(name));
    const Tensor loaded = file.tensor(name);
    EXPECT_EQ(loaded.dtype(), source.dtype());
    EXPECT_EQ(loaded.shape(), (Shape{3, 5}));
    EXPECT_TRUE(same_bytes(loaded, source));
    EXPECT_EQ(loaded.to_floats(), source.to_floats());
  }
}

TEST(SafetensorsFile, RoundTripsNonContiguousSources) {
  TemporaryDirectory directory;
  const Tensor base = Tensor::from_floats(exact_values(4 * 7, true), {4, 7}, DType::bf16);
  const Tensor transposed = base.transpose(0, 1);        // [7, 4]
  const Tensor strided = base.slice(1, 1, 7, 2);         // [4, 3], every other column
  const Tensor row = base.select(0, 2).narrow(0, 1, 5);  // [5], offset view
  ASSERT_FALSE(transposed.is_contiguous());
  ASSERT_FALSE(strided.is_contiguous());
  const auto path = directory / "views.safetensors";
  write_safetensors(path, {{"transposed", transposed}, {"strided", strided}, {"row", row}});

  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.tensor("transposed").shape(), (Shape{7, 4}));
  EXPECT_EQ(file.tensor("transposed").to_floats(), transposed.to_floats());
  EXPECT_EQ(file.tensor("strided").shape(), (Shape{4, 3}));
  EXPECT_EQ(file.tensor("strided").to_floats(), strided.to_floats());
  EXPECT_EQ(file.tensor("row").to_floats(), row.to_floats());
}

TEST(SafetensorsFile, RoundTripsScalarsAndEmptyTensors) {
  TemporaryDirectory directory;
  const auto path = directory / "edge.safetensors";
  const std::vector<float> one = {2.5f};
  write_safetensors(path, {{"scalar", Tensor::from_floats(one, {}, DType::f32)},
                           {"empty", Tensor::zeros({0, 3}, DType::f16)}});

  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.tensor("scalar").shape(), Shape{});
  EXPECT_EQ(file.tensor("scalar").to_floats(), one);
  EXPECT_EQ(file.tensor("empty").shape(), (Shape{0, 3}));
  EXPECT_EQ(file.info("empty").nbytes(), 0u);
}

TEST(SafetensorsFile, OpensFileWithoutTensors) {
  TemporaryDirectory directory;
  const auto path = directory / "none.safetensors";
  write_safetensors(path, std::vector<SafetensorsEntry>{}, {{"note", "empty"}});
  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_TRUE(file.names().empty());
  EXPECT_EQ(file.data_bytes(), 0u);
  EXPECT_EQ(file.metadata().at("note"), "empty");
}

TEST(SafetensorsFile, WriterAlignsEveryTensorToItsElementSize) {
  TemporaryDirectory directory;
  const auto path = directory / "aligned.safetensors";
  // Odd sizes first, so that writing in the given order would misalign the wider types.
  write_safetensors(path, {{"bytes", Tensor::zeros({3}, DType::uint8)},
                           {"halves", Tensor::zeros({5}, DType::bf16)},
                           {"floats", Tensor::zeros({7}, DType::f32)},
                           {"longs", Tensor::zeros({1}, DType::int64)}});
  const std::string bytes = test_support::read_file(path);
  std::uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, bytes.data(), 8);
  EXPECT_EQ(header_bytes % 8, 0u);

  const SafetensorsFile file = SafetensorsFile::open(path);
  for (const TensorInfo& info : file.tensors()) {
    SCOPED_TRACE(info.name);
    const std::size_t element_bytes = dtype_bytes(*info.dtype, 1);
    EXPECT_EQ(info.data_begin % element_bytes, 0u);
    const auto address = reinterpret_cast<std::uintptr_t>(file.tensor(info.name).data());
    EXPECT_EQ(address % element_bytes, 0u);
  }
  // Widest first: names() follows the data order.
  EXPECT_EQ(file.names(), (std::vector<std::string>{"longs", "floats", "halves", "bytes"}));
}

TEST(SafetensorsFile, ViewsPointIntoTheMapping) {
  TemporaryDirectory directory;
  const auto path = directory / "view.safetensors";
  write_safetensors(path, {{"w", Tensor::from_floats(exact_values(6, true), {2, 3})}});
  Tensor view;
  {
    const SafetensorsFile file = SafetensorsFile::open(path);
    const TensorInfo& info = file.info("w");
    view = file.tensor("w");
    EXPECT_EQ(view.data(), file.mapping().data() + info.data_begin);
    EXPECT_TRUE(view.storage()->is_external());
  }
  // The view keeps the mapping alive after the file object is gone.
  EXPECT_EQ(view.to_floats(), exact_values(6, true));
}

TEST(SafetensorsFile, ListsNamesInDataOrder) {
  TemporaryDirectory directory;
  const auto path = directory / "order.safetensors";
  write_raw_safetensors(path,
                        R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},)"
                        R"("a":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},)"
                        R"("c":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})",
                        6);
  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.names(), (std::vector<std::string>{"c", "b", "a"}));
  const std::uint64_t data_offset = file.mapping().size() - 6;
  EXPECT_EQ(file.info("a").data_begin, data_offset + 4);
  EXPECT_EQ(file.info("a").data_end, data_offset + 6);
}

TEST(SafetensorsFile, RecordsDtypesWithoutEngineType) {
  TemporaryDirectory directory;
  const auto path = directory / "f64.safetensors";
  write_raw_safetensors(path,
                        R"({"mask":{"dtype":"BOOL","shape":[3],"data_offsets":[16,19]},)"
                        R"("d":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})",
                        19);
  const SafetensorsFile file = SafetensorsFile::open(path);
  const TensorInfo& info = file.info("d");
  EXPECT_EQ(info.stored_dtype, "F64");
  EXPECT_FALSE(info.dtype.has_value());
  EXPECT_EQ(info.nbytes(), 16u);
  EXPECT_EQ(file.info("mask").stored_dtype, "BOOL");
  const std::string message = error_message([&] { file.tensor("d"); });
  EXPECT_THAT(message, HasSubstr("tensor \"d\" has dtype F64, which the engine cannot load"));
  EXPECT_THAT(message, HasSubstr("BF16"));
}

TEST(SafetensorsFile, MissingNameSuggestsCloseNames) {
  TemporaryDirectory directory;
  const auto path = directory / "names.safetensors";
  write_safetensors(path, {{"blocks.0.attn.to_q.weight", Tensor::zeros({2}, DType::f32)},
                           {"blocks.0.attn.to_k.weight", Tensor::zeros({2}, DType::f32)},
                           {"norm.weight", Tensor::zeros({2}, DType::f32)}});
  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_FALSE(file.contains("blocks.0.attn.to_v.weight"));
  const std::string message = error_message([&] { file.info("blocks.0.attn.to_v.weight"); });
  EXPECT_THAT(message, HasSubstr(path.string()));
  EXPECT_THAT(message,
              HasSubstr("tensor \"blocks.0.attn.to_v.weight\" not found among its 3 tensors"));
  EXPECT_THAT(message, HasSubstr("did you mean \"blocks.0.attn.to_k.weight\" or "
                                 "\"blocks.0.attn.to_q.weight\"?"));
  EXPECT_THAT(message, Not(HasSubstr("norm.weight")));

  const std::string far = error_message([&] { file.tensor("unrelated"); });
  EXPECT_THAT(far, HasSubstr("tensor \"unrelated\" not found among its 3 tensors"));
  EXPECT_THAT(far, Not(HasSubstr("did you mean")));
}

TEST(SafetensorsFile, MissingFileNamesThePath) {
  TemporaryDirectory directory;
  const auto path = directory / "absent.safetensors";
  const std::string message = error_message([&] { SafetensorsFile::open(path); });
  EXPECT_THAT(message, HasSubstr("cannot open " + path.string()));
  EXPECT_THAT(message, HasSubstr("No such file or directory"));
}

// Files whose first bytes are wrong, before any JSON is read.
TEST(SafetensorsFile, RejectsBadLengthPrefix) {
  TemporaryDirectory directory;
  const auto path = directory / "bad.safetensors";
  struct Case {
    std::string label;
    std::string bytes;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"shorter than 8 bytes", "abc", "file is 3 bytes, shorter than the 8-byte header length"},
      {"zero header length", little_endian_u64(0) + "{}", "header length is 0"},
      {"header longer than file", little_endian_u64(100) + "{}",
       "header length 100 bytes exceeds the file: 8 + 100 bytes needed but the file has 10 "
       "bytes"},
      {"header over the limit", little_endian_u64(200ull << 20) + "{}",
       "header length 209715200 bytes exceeds the limit of 104857600 bytes"},
      {"length wraps around", little_endian_u64(~0ull) + "{}", "exceeds the limit"},
  };
  for (const Case& test : cases) {
    SCOPED_TRACE(test.label);
    write_file(path, test.bytes);
    const std::string message = error_message([&] { SafetensorsFile::open(path); });
    EXPECT_THAT(message, HasSubstr(path.string() + ": "));
    EXPECT_THAT(message, HasSubstr(test.expected));
  }
}

TEST(SafetensorsFile, RejectsDataRegionCutShort) {
  TemporaryDirectory directory;
  const auto path = directory / "cut.safetensors";
  write_safetensors(path, {{"w", Tensor::zeros({4, 4}, DType::f32)}});
  std::string bytes = test_support::read_file(path);
  bytes.resize(bytes.size() - 5);
  write_file(path, bytes);
  const std::string message = error_message([&] { SafetensorsFile::open(path); });
  EXPECT_THAT(message, HasSubstr("tensor \"w\": data_offsets [0, 64] end past the data region "
                                 "of 59 bytes"));
  EXPECT_THAT(message, HasSubstr("the file is truncated"));
}

// One malformed header: its JSON text, the data region size and the expected message part.
struct MalformedHeader {
  std::string label;
  std::string header;
  std::size_t data_bytes;
  std::string expected;
};

std::string entry(std::string_view name, std::string_view dtype, std::string_view shape,
                  std::string_view offsets) {
  return "\"" + std::string(name) + "\":{\"dtype\":\"" + std::string(dtype) +
         "\",\"shape\":" + std::string(shape) + ",\"data_offsets\":" + std::string(offsets) + "}";
}

std::vector<MalformedHeader> malformed_headers() {
  return {
      {"invalid JSON", R"({"a": [1,2,})", 0, "invalid JSON at file offset 19: parse error"},
      {"number out of range", "{" + entry("w", "F32", "[1e999]", "[0,4]") + "}", 4,
       "invalid JSON: number overflow parsing '1e999'"},
      {"invalid UTF-8", "{\"\xff\":1}", 0, "invalid JSON at file offset"},
      {"top level array", "[1]", 0,
       "header must be a JSON object mapping tensor names to entries, found array [1]"},
      {"entry not an object", R"({"w":[1,2]})", 0,
       "tensor \"w\": entry must be an object with dtype, shape and data_offsets, found array"},
      {"unknown dtype", "{" + entry("w", "Q4", "[4]", "[0,4]") + "}", 4,
       "tensor \"w\": unknown dtype \"Q4\"; expected one of F64, F32, F16, BF16"},
      {"dtype not a string", R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", 4,
       "tensor \"w\": dtype must be a string such as \"BF16\", found number 4"},
      {"negative dimension", "{" + entry("w", "F32", "[2,-3]", "[0,24]") + "}", 24,
       "tensor \"w\": shape[1] is number -3; dimensions must be non-negative integers"},
      {"fractional dimension", "{" + entry("w", "F32", "[1.5]", "[0,4]") + "}", 4,
       "tensor \"w\": shape[0] is number 1.5; dimensions must be non-negative integers"},
      {"string dimension", "{" + entry("w", "F32", "[\"2\"]", "[0,8]") + "}", 8,
       "tensor \"w\": shape[0] is string \"2\"; dimensions must be non-negative integers"},
      {"shape not an array", "{" + entry("w", "F32", "\"2x3\"", "[0,24]") + "}", 24,
       "tensor \"w\": shape must be an array of non-negative integers, found string \"2x3\""},
      {"dimension over int64", "{" + entry("w", "U8", "[9223372036854775808]", "[0,1]") + "}", 1,
       "tensor \"w\": shape[0] is 9223372036854775808, larger than the maximum dimension "
       "9223372036854775807"},
      {"element count overflow",
       "{" + entry("w", "F32", "[4294967296,4294967296,16]", "[0,4]") + "}", 4,
       "tensor \"w\": shape [4294967296, 4294967296, 16] has more than 2^63 - 1 elements"},
      {"byte count overflow", "{" + entry("w", "F64", "[4611686018427387904]", "[0,8]") + "}", 8,
       "tensor \"w\": shape [4611686018427387904] with dtype F64 needs more than 2^64 bytes"},
      {"span does not match shape", "{" + entry("blocks.0.w", "BF16", "[16,32]", "[0,1000]") + "}",
       1000,
       "tensor \"blocks.0.w\": data_offsets span 1000 bytes but shape [16, 32] with dtype BF16 "
       "needs 1024 bytes"},
      {"offsets past the data", "{" + entry("w", "F32", "[6]", "[0,24]") + "}", 16,
       "tensor \"w\": data_offsets [0, 24] end past the data region of 16 bytes"},
      {"begin after end", "{" + entry("w", "F32", "[1]", "[8,4]") + "}", 8,
       "tensor \"w\": data_offsets [8, 4] have begin after end"},
      {"offsets with one number", "{" + entry("w", "F32", "[1]", "[0]") + "}", 4,
       "tensor \"w\": data_offsets must be [begin, end] with two non-negative integers, found "
       "array [0]"},
      {"negative offset", "{" + entry("w", "F32", "[1]", "[-4,0]") + "}", 4,
       "tensor \"w\": data_offsets must be [begin, end] with two non-negative integers"},
      {"overlapping spans",
       "{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("b", "F32", "[2]", "[4,12]") + "}", 12,
       "tensors \"a\" (data_offsets [0, 8]) and \"b\" (data_offsets [4, 12]) overlap"},
      {"gap between spans",
       "{" + entry("a", "F32", "[1]", "[0,4]") + "," + entry("b", "F32", "[1]", "[8,12]") + "}", 12,
       "data bytes [4, 8) before tensor \"b\" belong to no tensor"},
      {"trailing bytes", "{" + entry("a", "F32", "[1]", "[0,4]") + "}", 8,
       "the tensors cover 4 bytes but the data region has 8 bytes"},
      {"duplicate tensor name",
       "{" + entry("a", "F32", "[1]", "[0,4]") + "," + entry("a", "F32", "[1]", "[4,8]") + "}", 8,
       "tensor \"a\" appears twice in the header"},
      {"duplicate field", R"({"a":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}})",
       4, "tensor \"a\": field \"dtype\" appears twice"},
      {"unknown field", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"offset":0}})", 4,
       "tensor \"a\": unknown field \"offset\"; expected only dtype, shape and data_offsets"},
      {"missing field", R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", 4,
       "tensor \"a\": missing field \"shape\""},
      {"metadata not an object", R"({"__metadata__":["x"]})", 0,
       "__metadata__ must be an object of string values, found array [\"x\"]"},
      {"metadata value not a string", R"({"__metadata__":{"step":1}})", 0,
       "__metadata__ \"step\" must be a string, found number 1"},
      {"duplicate metadata key", R"({"__metadata__":{"k":"1","k":"2"}})", 0,
       "__metadata__ key \"k\" appears twice"},
  };
}

TEST(SafetensorsFile, RejectsMalformedHeaders) {
  TemporaryDirectory directory;
  const auto path = directory / "model.safetensors";
  for (const MalformedHeader& test : malformed_headers()) {
    SCOPED_TRACE(test.label);
    write_raw_safetensors(path, test.header, test.data_bytes);
    const std::string message = error_message([&] { SafetensorsFile::open(path); });
    EXPECT_THAT(message, HasSubstr(path.string() + ": "));
    EXPECT_THAT(message, HasSubstr(test.expected));
  }
}

TEST(SafetensorsFile, AcceptsZeroSizedTensorsAtOneOffset) {
  TemporaryDirectory directory;
  const auto path = directory / "zeros.safetensors";
  write_raw_safetensors(path,
                        "{" + entry("a", "F32", "[0]", "[4,4]") + "," +
                            entry("b", "F32", "[1]", "[0,4]") + "," +
                            entry("c", "F16", "[0,7]", "[4,4]") + "}",
                        4);
  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.names(), (std::vector<std::string>{"b", "a", "c"}));
}

TEST(SafetensorsFormat, ParsesFromMemory) {
  // The fuzz target uses parse_file directly on bytes.
  const std::string header = "{" + entry("w", "U8", "[2]", "[0,2]") + "}";
  const std::string bytes = little_endian_u64(header.size()) + header + "xy";
  const auto parsed = safetensors_format::parse_file(std::as_bytes(std::span(bytes)), "memory");
  ASSERT_EQ(parsed.tensors.size(), 1u);
  EXPECT_EQ(parsed.tensors[0].data_begin, 8 + header.size());
  EXPECT_EQ(parsed.data_bytes, 2u);
}

}  // namespace
}  // namespace ethereal
