// write_safetensors and write_sharded_safetensors: streaming entries, validation of entries,
// and failures that must leave neither a temporary file nor a changed target.

#include "io/safetensors_writer.h"

#include <sys/stat.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "io/safetensors_checkpoint.h"
#include "runtime/error.h"
#include "safetensors_test_util.h"
#include "support/errors.h"

namespace ethereal {
namespace {

using test_support::error_message;
using test_support::file_names;
using test_support::read_file;
using test_support::TemporaryDirectory;
using test_support::write_file;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// An entry whose bytes are produced in chunks of `chunk` bytes: byte i has value i % 251.
SafetensorsEntry streamed_u8(std::string name, std::int64_t count, std::size_t chunk) {
  SafetensorsEntry entry;
  entry.name = std::move(name);
  entry.dtype = DType::uint8;
  entry.shape = {count};
  entry.write_data = [count, chunk](TensorDataSink& sink) {
    std::vector<std::byte> buffer;
    for (std::int64_t i = 0; i < count; ++i) {
      buffer.push_back(static_cast<std::byte>(i % 251));
      if (buffer.size() == chunk || i + 1 == count) {
        sink.write(buffer);
        buffer.clear();
      }
    }
  };
  return entry;
}

// An entry of `bytes` bytes (uint8) whose writer produces `produced` bytes.
SafetensorsEntry sized_u8(std::string name, std::int64_t bytes, std::size_t produced) {
  SafetensorsEntry entry;
  entry.name = std::move(name);
  entry.dtype = DType::uint8;
  entry.shape = {bytes};
  entry.write_data = [produced](TensorDataSink& sink) {
    const std::vector<std::byte> data(produced, std::byte{7});
    sink.write(data);
  };
  return entry;
}

SafetensorsEntry throwing_entry(std::string name) {
  SafetensorsEntry entry;
  entry.name = std::move(name);
  entry.dtype = DType::f32;
  entry.shape = {2};
  entry.write_data = [](TensorDataSink& sink) {
    const std::vector<std::byte> half(4, std::byte{1});
    sink.write(half);
    throw std::runtime_error("producer failed");
  };
  return entry;
}

TEST(SafetensorsWriter, StreamsEntriesInChunks) {
  TemporaryDirectory directory;
  const auto path = directory / "streamed.safetensors";
  // More than the writer's 4 MiB buffer, in odd chunk sizes.
  const std::int64_t count = (5 << 20) + 3;
  write_safetensors(path, {streamed_u8("big", count, 1'000'003), streamed_u8("small", 17, 5)});

  const SafetensorsFile file = SafetensorsFile::open(path);
  const Tensor big = file.tensor("big");
  ASSERT_EQ(big.numel(), count);
  const auto* bytes = big.data_as<const std::uint8_t>();
  bool all_match = true;
  for (std::int64_t i = 0; i < count; ++i) {
    all_match = all_match && bytes[i] == i % 251;
  }
  EXPECT_TRUE(all_match);
  EXPECT_EQ(file.tensor("small").to_floats().back(), 16.0f);
}

TEST(SafetensorsWriter, RejectsWrongByteCounts) {
  TemporaryDirectory directory;
  const auto path = directory / "counts.safetensors";
  EXPECT_THAT(error_message([&] { write_safetensors(path, {sized_u8("short", 8, 5)}); }),
              HasSubstr("tensor \"short\": the data writer produced 5 bytes but shape [8] with "
                        "dtype uint8 needs 8 bytes"));
  EXPECT_THAT(error_message([&] { write_safetensors(path, {sized_u8("long", 8, 9)}); }),
              HasSubstr("tensor \"long\": the data writer produced more than the 8 bytes of "
                        "shape [8]"));
  EXPECT_TRUE(file_names(directory.path()).empty());
}

TEST(SafetensorsWriter, RejectsInvalidEntries) {
  TemporaryDirectory directory;
  const auto path = directory / "invalid.safetensors";
  EXPECT_THAT(error_message([&] {
                write_safetensors(path, {sized_u8("w", 1, 1), sized_u8("w", 1, 1)});
              }),
              HasSubstr(path.string() + ": tensor \"w\": name given twice"));
  EXPECT_THAT(error_message([&] { write_safetensors(path, {sized_u8("", 1, 1)}); }),
              HasSubstr("invalid tensor name"));
  EXPECT_THAT(error_message([&] { write_safetensors(path, {sized_u8("__metadata__", 1, 1)}); }),
              HasSubstr("invalid tensor name"));

  SafetensorsEntry negative = sized_u8("negative", 1, 1);
  negative.shape = {2, -1};
  EXPECT_THAT(error_message([&] { write_safetensors(path, {negative}); }),
              HasSubstr("tensor \"negative\": shape [2, -1] has a negative dimension"));

  EXPECT_THAT(error_message([&] {
                write_safetensors(path, {{"packed", Tensor::zeros({4}, DType::packed4)}});
              }),
              HasSubstr("dtype packed4 cannot be stored in safetensors"));
  EXPECT_THAT(error_message([&] { safetensors_entry("undefined", Tensor()); }),
              HasSubstr("tensor \"undefined\" cannot be written"));
  EXPECT_TRUE(file_names(directory.path()).empty());
}

TEST(SafetensorsWriter, FailureKeepsExistingTarget) {
  TemporaryDirectory directory;
  const auto path = directory / "model.safetensors";
  write_safetensors(path, {{"old", Tensor::zeros({3}, DType::f32)}});
  const std::string before = read_file(path);

  EXPECT_THROW(write_safetensors(path, {sized_u8("a", 4, 4), throwing_entry("b")}),
               std::runtime_error);
  EXPECT_EQ(read_file(path), before);
  EXPECT_THAT(file_names(directory.path()), ElementsAre("model.safetensors"));

  error_message([&] { write_safetensors(path, {sized_u8("x", 1, 1), sized_u8("x", 1, 1)}); });
  EXPECT_EQ(read_file(path), before);
  EXPECT_THAT(file_names(directory.path()), ElementsAre("model.safetensors"));
}

TEST(SafetensorsWriter, ReplacesExistingTarget) {
  TemporaryDirectory directory;
  const auto path = directory / "model.safetensors";
  write_file(path, "previous contents");
  write_safetensors(path, {sized_u8("w", 3, 3)});
  EXPECT_THAT(SafetensorsFile::open(path).names(), ElementsAre("w"));
  EXPECT_THAT(file_names(directory.path()), ElementsAre("model.safetensors"));
}

TEST(SafetensorsWriter, RejectsUnusableDirectory) {
  TemporaryDirectory directory;
  const auto missing = directory / "missing" / "model.safetensors";
  const std::string message =
      error_message([&] { write_safetensors(missing, {sized_u8("w", 1, 1)}); });
  EXPECT_THAT(message, HasSubstr("cannot create " + missing.string() + ".tmp."));
  EXPECT_THAT(message, HasSubstr("No such file or directory"));

  // A regular file where the directory should be.
  write_file(directory / "plain", "x");
  const auto under_file = directory / "plain" / "model.safetensors";
  EXPECT_THAT(error_message([&] { write_safetensors(under_file, {sized_u8("w", 1, 1)}); }),
              HasSubstr("Not a directory"));
  EXPECT_THAT(file_names(directory.path()), ElementsAre("plain"));
}

TEST(SafetensorsWriter, ShardsBySize) {
  TemporaryDirectory directory;
  // Limits of 100 bytes: 64 | 64 | 200 (alone, over the limit) | 8 + 0.
  const std::vector<SafetensorsEntry> entries = {sized_u8("a", 64, 64), sized_u8("b", 64, 64),
                                                 sized_u8("c", 200, 200), sized_u8("d", 8, 8),
                                                 sized_u8("e", 0, 0)};
  write_sharded_safetensors(directory.path(), "model", entries, 100);
  EXPECT_THAT(file_names(directory.path()),
              ElementsAre("model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                          "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
                          "model.safetensors.index.json"));
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(directory.path());
  EXPECT_THAT(checkpoint.files()[3].names(), ElementsAre("d", "e"));
  EXPECT_EQ(checkpoint.info("c").nbytes(), 200u);
  EXPECT_EQ(checkpoint.metadata().at("total_size"), "336");
}

TEST(SafetensorsWriter, ShardedFailureWritesNothing) {
  TemporaryDirectory directory;
  write_file(directory / "keep.txt", "unrelated");
  const std::vector<SafetensorsEntry> entries = {sized_u8("a", 64, 64), sized_u8("b", 64, 64),
                                                 throwing_entry("c")};
  EXPECT_THROW(write_sharded_safetensors(directory.path(), "model", entries, 64),
               std::runtime_error);
  EXPECT_THAT(file_names(directory.path()), ElementsAre("keep.txt"));

  EXPECT_THAT(
      error_message([&] { write_sharded_safetensors(directory.path(), "model", entries, 0); }),
      HasSubstr("maximum shard size is 0 bytes"));
  EXPECT_THAT(
      error_message([&] { write_sharded_safetensors(directory.path(), "sub/model", entries, 64); }),
      HasSubstr("invalid shard base name \"sub/model\""));
  EXPECT_THAT(file_names(directory.path()), ElementsAre("keep.txt"));
}

// Bytes the file system allocated for `path` (st_blocks counts 512-byte units).
std::uint64_t allocated_bytes(const std::filesystem::path& path) {
  struct stat status {};
  if (::stat(path.c_str(), &status) != 0) {
    throw std::runtime_error("cannot stat " + path.string());
  }
  return static_cast<std::uint64_t>(status.st_blocks) * 512;
}

TEST(SafetensorsWriter, ZeroEntriesLeaveHoles) {
  TemporaryDirectory directory;
  const auto path = directory / "sparse.safetensors";
  constexpr std::int64_t kHoleBytes = 64 << 20;
  // One element size keeps the given order: a hole, data, and a hole at the end of the file.
  write_safetensors(path, {zero_safetensors_entry("first", DType::uint8, {kHoleBytes}),
                           streamed_u8("data", 1000, 7),
                           zero_safetensors_entry("last", DType::uint8, {2, kHoleBytes / 2})});

  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.info("first").nbytes(), static_cast<std::uint64_t>(kHoleBytes));
  EXPECT_EQ(file.info("last").shape, (Shape{2, kHoleBytes / 2}));
  const std::uint64_t header_bytes = file.info("first").data_begin;
  EXPECT_EQ(file.info("data").data_begin, header_bytes + kHoleBytes);
  EXPECT_EQ(std::filesystem::file_size(path), header_bytes + 2 * kHoleBytes + 1000);

  const Tensor data = file.tensor("data");
  const auto* bytes = data.data_as<const std::uint8_t>();
  EXPECT_EQ(bytes[0], 0);
  EXPECT_EQ(bytes[999], 999 % 251);
  const Tensor last = file.tensor("last");
  const auto* last_bytes = static_cast<const std::uint8_t*>(last.data());
  EXPECT_EQ(last_bytes[0], 0);
  EXPECT_EQ(last_bytes[last.nbytes() - 1], 0);
  // The holes are 128 MiB; the header, the data and the file system blocks around them take
  // far less than 1 MiB.
  EXPECT_LT(allocated_bytes(path), 1u << 20);
}

TEST(SafetensorsWriter, ShardedZeroEntriesLeaveHoles) {
  TemporaryDirectory directory;
  std::vector<SafetensorsEntry> entries;
  for (int i = 0; i < 4; ++i) {
    entries.push_back(zero_safetensors_entry("w" + std::to_string(i), DType::f32, {8 << 20}));
  }
  // 32 MiB per tensor, 64 MiB per shard.
  write_sharded_safetensors(directory.path(), "model", entries, 64u << 20);
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(directory.path());
  ASSERT_EQ(checkpoint.files().size(), 2u);
  EXPECT_EQ(checkpoint.metadata().at("total_size"), std::to_string(128u << 20));
  for (const auto* name :
       {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}) {
    EXPECT_GT(std::filesystem::file_size(directory / name), 64u << 20);
    EXPECT_LT(allocated_bytes(directory / name), 1u << 20);
  }
}

TEST(SafetensorsWriter, ZeroEntryChecksSize) {
  TemporaryDirectory directory;
  SafetensorsEntry entry = zero_safetensors_entry("w", DType::f32, {4});
  // A writer that appends more zeros than the shape's byte size is rejected as with write().
  entry.write_data = [](TensorDataSink& sink) { sink.write_zeros(17); };
  EXPECT_THAT(error_message([&] { write_safetensors(directory / "w.safetensors", {entry}); }),
              HasSubstr("tensor \"w\": the data writer produced more than the 16 bytes"));
  EXPECT_TRUE(file_names(directory.path()).empty());
}

// A sink with only write(), to check the default write_zeros.
class CollectingSink final : public TensorDataSink {
 public:
  void write(std::span<const std::byte> bytes) override {
    ++calls;
    collected.insert(collected.end(), bytes.begin(), bytes.end());
  }
  int calls = 0;
  std::vector<std::byte> collected;
};

TEST(SafetensorsWriter, DefaultWriteZerosAppendsZeros) {
  CollectingSink sink;
  constexpr std::uint64_t kCount = (9u << 20) + 5;  // more than the writer's 4 MiB buffer
  sink.write_zeros(kCount);
  ASSERT_EQ(sink.collected.size(), kCount);
  EXPECT_GT(sink.calls, 0);
  EXPECT_TRUE(std::all_of(sink.collected.begin(), sink.collected.end(),
                          [](std::byte b) { return b == std::byte{0}; }));
}

}  // namespace
}  // namespace ethereal
