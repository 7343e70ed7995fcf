// Read-only memory mapping of a whole file.
//
// Checkpoint readers map a file once and hand out views into it. The kernel reads pages in on
// first access and may drop them again under memory pressure, so a mapped checkpoint costs
// address space rather than resident memory. advise_willneed() starts reading a range ahead
// of use (prefetching the next block's weights), and advise_dontneed() releases a range's
// pages after use (sequential offload on the CPU).
//
// The mapping is PROT_READ and MAP_PRIVATE: a write through any pointer into it is a
// segmentation fault, never a change to the file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>

namespace ethereal {

class FileMapping {
 public:
  // Maps the whole file at `path`. An empty file gives a mapping with data() == nullptr.
  // Throws InvalidInputError when the file is missing, unreadable or not a regular file,
  // OutOfMemoryError when mmap fails with ENOMEM, and IoError for other system failures.
  explicit FileMapping(const std::filesystem::path& path);
  ~FileMapping();

  FileMapping(FileMapping&& other) noexcept;
  FileMapping& operator=(FileMapping&& other) noexcept;
  FileMapping(const FileMapping&) = delete;
  FileMapping& operator=(const FileMapping&) = delete;

  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

  // Hint that [offset, offset + length) will be read soon (MADV_WILLNEED). The range is
  // widened to whole pages. Throws std::out_of_range when the range ends past size(), and
  // IoError when madvise fails.
  void advise_willneed(std::uint64_t offset, std::uint64_t length) const;
  // Releases the pages of [offset, offset + length) (MADV_DONTNEED). The next access reads
  // them from the file again. The range is widened to whole pages, so pages shared with
  // neighbouring bytes are dropped too, which costs only a re-read. Same errors as above.
  void advise_dontneed(std::uint64_t offset, std::uint64_t length) const;

 private:
  void advise(std::uint64_t offset, std::uint64_t length, int advice, const char* name) const;
  void unmap() noexcept;

  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace ethereal
