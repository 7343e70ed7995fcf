#include "io/file_mapping.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>

#include "runtime/error.h"

namespace ethereal {

namespace {

// Closes a file descriptor at scope exit. A mapping stays valid after its descriptor is closed.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;

  int get() const { return fd_; }

 private:
  int fd_;
};

[[noreturn]] void throw_open_error(const std::filesystem::path& path, int error) {
  const std::string message =
      fmt::format("cannot open {}: {}", path.string(), std::strerror(error));
  // Errors the user can fix by giving another path or fixing permissions.
  if (error == ENOENT || error == ENOTDIR || error == EACCES || error == EISDIR || error == ELOOP ||
      error == ENAMETOOLONG) {
    throw InvalidInputError(message + "; check the path and its permissions");
  }
  throw IoError(message);
}

std::size_t page_size() {
  static const std::size_t size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

}  // namespace

FileMapping::FileMapping(const std::filesystem::path& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw_open_error(path, errno);
  }
  const FileDescriptor file(fd);

  struct stat status {};
  if (::fstat(file.get(), &status) != 0) {
    throw IoError(
        fmt::format("cannot read the size of {}: {}", path.string(), std::strerror(errno)));
  }
  if (!S_ISREG(status.st_mode)) {
    throw InvalidInputError(
        fmt::format("{} is not a regular file; pass the path of a file", path.string()));
  }
  size_ = static_cast<std::size_t>(status.st_size);
  if (size_ == 0) {
    return;  // mmap rejects zero-length mappings, and an empty file has no bytes to view
  }

  void* address = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, file.get(), 0);
  if (address == MAP_FAILED) {
    const int error = errno;
    if (error == ENOMEM) {
      OutOfMemoryError::Figures figures;
      figures.device = "storage";
      figures.requested_bytes = size_;
      throw OutOfMemoryError(figures,
                             fmt::format("cannot map {}: {}", path.string(), std::strerror(error)),
                             "raise the address-space limit (ulimit -v) or the map count limit "
                             "(vm.max_map_count)");
    }
    throw IoError(fmt::format("cannot map {}: {}", path.string(), std::strerror(error)));
  }
  data_ = static_cast<const std::byte*>(address);
}

FileMapping::~FileMapping() {
  unmap();
}

FileMapping::FileMapping(FileMapping&& other) noexcept
    : path_(std::move(other.path_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

FileMapping& FileMapping::operator=(FileMapping&& other) noexcept {
  if (this != &other) {
    unmap();
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void FileMapping::unmap() noexcept {
  if (data_ != nullptr) {
    ::munmap(const_cast<std::byte*>(data_), size_);
    data_ = nullptr;
  }
}

void FileMapping::advise_willneed(std::uint64_t offset, std::uint64_t length) const {
  advise(offset, length, MADV_WILLNEED, "MADV_WILLNEED");
}

void FileMapping::advise_dontneed(std::uint64_t offset, std::uint64_t length) const {
  advise(offset, length, MADV_DONTNEED, "MADV_DONTNEED");
}

void FileMapping::advise(std::uint64_t offset, std::uint64_t length, int advice,
                         const char* name) const {
  if (offset > size_ || length > size_ - offset) {
    throw std::out_of_range(fmt::format("{} of bytes [{}, {}) is outside {} ({} bytes)", name,
                                        offset, offset + length, path_.string(), size_));
  }
  if (length == 0) {
    return;
  }
  // madvise needs a page-aligned start. The mapping starts on a page boundary, so rounding the
  // offset down gives one, and the kernel rounds the length up to whole pages.
  const std::uint64_t begin = offset - offset % page_size();
  const std::uint64_t end = offset + length;
  if (::madvise(const_cast<std::byte*>(data_) + begin, end - begin, advice) != 0) {
    throw IoError(fmt::format("{} on bytes [{}, {}) of {} failed: {}", name, offset, end,
                              path_.string(), std::strerror(errno)));
  }
}

}  // namespace ethereal
