#include "io/checkpoint_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "runtime/allocator.h"
#include "runtime/error.h"

namespace ethereal {

namespace {

// Maximum bytes requested per pread call, because Linux transfers at most about 2 GiB per call.
constexpr std::uint64_t kMaxReadBytes = std::uint64_t{1} << 30;

}  // namespace

CheckpointReader::CheckpointReader(const SafetensorsCheckpoint& checkpoint)
    : checkpoint_(checkpoint) {
  try {
    for (const SafetensorsFile& file : checkpoint_.files()) {
      const int fd = ::open(file.path().c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        const int error = errno;
        throw InvalidInputError(fmt::format("cannot open {} to stream its tensors: {}",
                                            file.path().string(), std::strerror(error)));
      }
      descriptors_.push_back(fd);
      struct stat status {};
      if (::fstat(fd, &status) != 0) {
        const int error = errno;
        throw IoError(fmt::format("cannot read the size of {}: {}", file.path().string(),
                                  std::strerror(error)));
      }
      const auto size = static_cast<std::uint64_t>(status.st_size);
      if (size != file.mapping().size()) {
        throw InvalidInputError(fmt::format(
            "{} is {} bytes now but was {} bytes when it was opened; the file changed while "
            "in use, so open the model again",
            file.path().string(), size, file.mapping().size()));
      }
    }
  } catch (...) {
    for (int fd : descriptors_) {
      ::close(fd);
    }
    throw;
  }
}

CheckpointReader::~CheckpointReader() {
  for (int fd : descriptors_) {
    ::close(fd);
  }
}

int CheckpointReader::descriptor_of(std::string_view tensor) const {
  const SafetensorsFile& file = checkpoint_.file_of(tensor);
  const auto shard = static_cast<std::size_t>(&file - checkpoint_.files().data());
  return descriptors_.at(shard);
}

void CheckpointReader::read_bytes(std::string_view tensor, std::uint64_t offset,
                                  std::uint64_t length, void* destination) const {
  const int fd = descriptor_of(tensor);
  const std::filesystem::path& path = checkpoint_.file_of(tensor).path();
  auto* out = static_cast<std::byte*>(destination);
  std::uint64_t done = 0;
  while (done < length) {
    const std::uint64_t chunk = std::min(length - done, kMaxReadBytes);
    const ssize_t got =
        ::pread(fd, out + done, static_cast<std::size_t>(chunk), static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) {
        continue;
      }
      const int error = errno;
      throw IoError(fmt::format("{}: reading tensor \"{}\" (bytes {} to {}) failed at byte {}: {}",
                                path.string(), tensor, offset, offset + length, offset + done,
                                std::strerror(error)));
    }
    if (got == 0) {
      throw IoError(fmt::format(
          "{}: tensor \"{}\" needs bytes {} to {}, but the file ends at byte {}; it was "
          "truncated or replaced after it was opened, so restore the file and open the model "
          "again",
          path.string(), tensor, offset, offset + length, offset + done));
    }
    done += static_cast<std::uint64_t>(got);
  }
}

Tensor CheckpointReader::read(std::string_view name) const {
  const TensorInfo& entry = checkpoint_.info(name);
  if (!entry.dtype) {
    // The mapped view raises the error that names the dtype and the loadable ones.
    (void)checkpoint_.tensor(name);
  }
  Tensor tensor = Tensor::empty(entry.shape, *entry.dtype);
  if (!tensor.is_dry() && entry.nbytes() > 0) {
    read_bytes(name, entry.data_begin, entry.nbytes(), tensor.data());
  }
  return tensor;
}

}  // namespace ethereal
