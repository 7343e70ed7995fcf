#include "io/checkpoint_reader.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "io/safetensors_writer.h"
#include "placement_test_support.h"
#include "runtime/allocator.h"
#include "runtime/error.h"

namespace ethereal {
namespace {

using placement_test::TemporaryDirectory;

Tensor ramp(std::int64_t count, float offset, DType dtype) {
  std::vector<float> values(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) {
    values[static_cast<std::size_t>(i)] = offset + static_cast<float>(i) * 0.25f;
  }
  return Tensor::from_floats(values, {count}, dtype);
}

std::filesystem::path write_two_tensors(const TemporaryDirectory& directory) {
  const std::filesystem::path path = directory / "weights.safetensors";
  write_safetensors(path, std::vector<std::pair<std::string, Tensor>>{
                              {"first", ramp(1000, 1.0f, DType::bf16)},
                              {"second", ramp(3000, -5.0f, DType::bf16)},
                          });
  return path;
}

TEST(CheckpointReader, ReadsTheStoredBytes) {
  const TemporaryDirectory directory;
  const SafetensorsCheckpoint checkpoint =
      SafetensorsCheckpoint::open(write_two_tensors(directory));
  const CheckpointReader reader(checkpoint);
  for (const char* name : {"first", "second"}) {
    const Tensor read = reader.read(name);
    EXPECT_EQ(read.dtype(), DType::bf16);
    EXPECT_EQ(read.shape(), checkpoint.info(name).shape);
    EXPECT_FALSE(read.storage()->is_external()) << "the copy must be allocator memory";
    EXPECT_EQ(read.to_floats(), checkpoint.tensor(name).to_floats()) << name;
  }
}

TEST(CheckpointReader, DryRunAllocatesWithoutReading) {
  const TemporaryDirectory directory;
  const SafetensorsCheckpoint checkpoint =
      SafetensorsCheckpoint::open(write_two_tensors(directory));
  const CheckpointReader reader(checkpoint);
  CpuCachingAllocator dry(CpuCachingAllocator::Options{.dry_run = true});
  const ScopedAllocator scope(dry);
  const Tensor read = reader.read("second");
  EXPECT_TRUE(read.is_dry());
  EXPECT_EQ(dry.stats().requested_bytes.current, 3000 * 2);
}

// A file cut short after it was opened is an IoError naming the file and the tensor; reading
// the same bytes through the mapping would raise SIGBUS.
TEST(CheckpointReader, TruncatedFileIsIoErrorNamingTensor) {
  const TemporaryDirectory directory;
  const std::filesystem::path path = write_two_tensors(directory);
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(path);
  const CheckpointReader reader(checkpoint);
  const TensorInfo& second = checkpoint.info("second");
  std::filesystem::resize_file(path, second.data_begin + 100);

  CpuCachingAllocator allocator;
  const ScopedAllocator scope(allocator);
  try {
    (void)reader.read("second");
    FAIL() << "a truncated tensor was read";
  } catch (const IoError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
    EXPECT_NE(message.find("\"second\""), std::string::npos) << message;
    EXPECT_NE(message.find("truncated"), std::string::npos) << message;
  }
  EXPECT_EQ(allocator.stats().allocated_bytes.current, 0);
  // The first tensor still lies before the cut.
  EXPECT_EQ(reader.read("first").to_floats(), ramp(1000, 1.0f, DType::bf16).to_floats());
}

TEST(CheckpointReader, RejectsFileChangedSinceOpen) {
  const TemporaryDirectory directory;
  const std::filesystem::path path = write_two_tensors(directory);
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(path);
  std::filesystem::resize_file(path, 64);
  try {
    const CheckpointReader reader(checkpoint);
    FAIL() << "a file of another size was accepted";
  } catch (const InvalidInputError& error) {
    EXPECT_NE(std::string(error.what()).find("changed"), std::string::npos) << error.what();
  }
}

}  // namespace
}  // namespace ethereal
