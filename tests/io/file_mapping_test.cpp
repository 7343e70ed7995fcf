// FileMapping: contents, empty files, errors that name the path, and advice ranges.

#include "io/file_mapping.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>
#include <cstring>
#include <stdexcept>
#include <string>

#include "runtime/error.h"
#include "support/files.h"

namespace ethereal {
namespace {

using test_support::TemporaryDirectory;
using test_support::write_file;
using ::testing::HasSubstr;

// Bytes spanning a few pages, with a pattern that differs between pages.
std::string three_pages_and_a_bit() {
  const std::size_t size = 3 * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)) + 123;
  std::string bytes(size, '\0');
  for (std::size_t i = 0; i < size; ++i) {
    bytes[i] = static_cast<char>((i * 7 + i / 4096) % 256);
  }
  return bytes;
}

TEST(FileMapping, MapsWholeFile) {
  TemporaryDirectory directory;
  const auto path = directory / "data.bin";
  const std::string bytes = three_pages_and_a_bit();
  write_file(path, bytes);

  const FileMapping mapping(path);
  EXPECT_EQ(mapping.path(), path);
  ASSERT_EQ(mapping.size(), bytes.size());
  ASSERT_NE(mapping.data(), nullptr);
  EXPECT_EQ(std::memcmp(mapping.data(), bytes.data(), bytes.size()), 0);
}

TEST(FileMapping, EmptyFileHasNoMapping) {
  TemporaryDirectory directory;
  const auto path = directory / "empty.bin";
  write_file(path, "");
  const FileMapping mapping(path);
  EXPECT_EQ(mapping.size(), 0u);
  EXPECT_EQ(mapping.data(), nullptr);
  EXPECT_NO_THROW(mapping.advise_willneed(0, 0));
}

TEST(FileMapping, MoveTransfersOwnership) {
  TemporaryDirectory directory;
  const auto path = directory / "data.bin";
  write_file(path, "abcdefgh");
  FileMapping first(path);
  const std::byte* data = first.data();
  FileMapping second(std::move(first));
  EXPECT_EQ(second.data(), data);
  EXPECT_EQ(second.size(), 8u);
  EXPECT_EQ(first.data(), nullptr);  // NOLINT(bugprone-use-after-move): checks the moved-from state
  EXPECT_EQ(first.size(), 0u);

  write_file(directory / "other.bin", "xyz");
  FileMapping third(directory / "other.bin");
  third = std::move(second);
  EXPECT_EQ(third.data(), data);
  EXPECT_EQ(static_cast<char>(third.data()[7]), 'h');
}

TEST(FileMapping, ErrorsNameThePath) {
  TemporaryDirectory directory;
  const auto missing = directory / "missing.bin";
  try {
    FileMapping mapping(missing);
    FAIL() << "expected an InvalidInputError";
  } catch (const InvalidInputError& error) {
    EXPECT_THAT(error.what(),
                HasSubstr("cannot open " + missing.string() + ": No such file or directory"));
  }
  try {
    FileMapping mapping(directory.path());
    FAIL() << "expected an InvalidInputError";
  } catch (const InvalidInputError& error) {
    EXPECT_THAT(error.what(), HasSubstr(directory.path().string()));
  }
}

TEST(FileMapping, AdviceKeepsContentsReadable) {
  TemporaryDirectory directory;
  const auto path = directory / "data.bin";
  const std::string bytes = three_pages_and_a_bit();
  write_file(path, bytes);
  const FileMapping mapping(path);

  // Unaligned ranges are widened to pages; dropped pages are read again from the file.
  mapping.advise_willneed(100, 5000);
  mapping.advise_dontneed(4097, bytes.size() - 4097);
  mapping.advise_dontneed(0, bytes.size());
  EXPECT_EQ(std::memcmp(mapping.data(), bytes.data(), bytes.size()), 0);
  mapping.advise_willneed(bytes.size(), 0);
}

TEST(FileMapping, AdviceOutsideFileThrows) {
  TemporaryDirectory directory;
  const auto path = directory / "data.bin";
  write_file(path, "0123456789");
  const FileMapping mapping(path);
  EXPECT_THROW(mapping.advise_willneed(5, 6), std::out_of_range);
  EXPECT_THROW(mapping.advise_dontneed(11, 0), std::out_of_range);
  EXPECT_THROW(mapping.advise_willneed(1, ~0ull), std::out_of_range);
}

}  // namespace
}  // namespace ethereal
