#include "io/safetensors_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "io/safetensors_format.h"
#include "runtime/error.h"

namespace ethereal {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr std::size_t kWriteBufferBytes = 4u << 20;

// A file written next to its target and renamed over it by commit(). Until then the target is
// untouched, and the destructor removes the temporary file.
class TemporaryFile {
 public:
  explicit TemporaryFile(const fs::path& target);
  ~TemporaryFile();
  TemporaryFile(const TemporaryFile&) = delete;
  TemporaryFile& operator=(const TemporaryFile&) = delete;

  // Appends bytes through a buffer.
  void write(std::span<const std::byte> bytes);
  // Appends `count` zero bytes as a hole: moves the file offset without writing.
  void skip(std::uint64_t count);
  // Writes out the buffer, fsyncs and closes the file. Call before commit().
  void finish();
  // Renames the finished file over the target.
  void commit();

  const fs::path& target() const { return target_; }

 private:
  void write_fully(std::span<const std::byte> bytes);
  [[noreturn]] void fail(std::string_view action, int error) const;

  fs::path target_;
  fs::path temporary_;
  int fd_ = -1;
  std::vector<std::byte> buffer_;
  // Bytes appended so far, holes included. finish() sets the file size to it, which extends a
  // file that ends in a hole.
  std::uint64_t size_ = 0;
  bool committed_ = false;
};

TemporaryFile::TemporaryFile(const fs::path& target) : target_(target) {
  // The counter keeps names unique between threads of this process, and O_EXCL skips names
  // left behind by a crashed process that had the same id.
  static std::atomic<unsigned> counter{0};
  constexpr int kMaxAttempts = 100;
  for (int attempt = 0; attempt < kMaxAttempts && fd_ < 0; ++attempt) {
    temporary_ = target_;
    temporary_ += fmt::format(".tmp.{}.{}", ::getpid(), counter++);
    fd_ = ::open(temporary_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ < 0 && errno != EEXIST) {
      const int error = errno;
      const std::string message =
          fmt::format("cannot create {} to write {}: {}", temporary_.string(), target_.string(),
                      std::strerror(error));
      if (error == ENOENT || error == ENOTDIR || error == EACCES || error == EROFS) {
        throw InvalidInputError(message + "; check that the directory exists and is writable");
      }
      throw IoError(message);
    }
  }
  if (fd_ < 0) {
    throw IoError(fmt::format("cannot create a temporary file next to {}: {} names taken",
                              target_.string(), kMaxAttempts));
  }
  buffer_.reserve(kWriteBufferBytes);
}

TemporaryFile::~TemporaryFile() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
  if (!committed_) {
    ::unlink(temporary_.c_str());
  }
}

void TemporaryFile::fail(std::string_view action, int error) const {
  throw IoError(fmt::format("cannot {} {} while writing {}: {}", action, temporary_.string(),
                            target_.string(), std::strerror(error)));
}

void TemporaryFile::write_fully(std::span<const std::byte> bytes) {
  while (!bytes.empty()) {
    const ssize_t written = ::write(fd_, bytes.data(), bytes.size());
    if (written < 0) {
      if (errno == EINTR) {
        continue;
      }
      fail("write", errno);
    }
    bytes = bytes.subspan(static_cast<std::size_t>(written));
  }
}

void TemporaryFile::write(std::span<const std::byte> bytes) {
  size_ += bytes.size();
  if (buffer_.size() + bytes.size() > kWriteBufferBytes) {
    write_fully(buffer_);
    buffer_.clear();
  }
  if (bytes.size() >= kWriteBufferBytes) {
    write_fully(bytes);
  } else {
    buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
  }
}

void TemporaryFile::skip(std::uint64_t count) {
  if (count == 0) {
    return;
  }
  write_fully(buffer_);
  buffer_.clear();
  if (count > static_cast<std::uint64_t>(std::numeric_limits<off_t>::max()) ||
      ::lseek(fd_, static_cast<off_t>(count), SEEK_CUR) < 0) {
    fail("seek in", errno);
  }
  size_ += count;
}

void TemporaryFile::finish() {
  write_fully(buffer_);
  buffer_.clear();
  // A hole at the end is not part of the file until the size covers it.
  if (::ftruncate(fd_, static_cast<off_t>(size_)) != 0) {
    fail("extend", errno);
  }
  if (::fsync(fd_) != 0) {
    fail("fsync", errno);
  }
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    fail("close", errno);
  }
}

void TemporaryFile::commit() {
  if (::rename(temporary_.c_str(), target_.c_str()) != 0) {
    fail("rename", errno);
  }
  committed_ = true;
  // Makes the rename itself durable. NOTE: failures are ignored because the target already
  // contains the new bytes, and some file systems reject fsync on directories.
  const fs::path directory = target_.has_parent_path() ? target_.parent_path() : fs::path(".");
  const int directory_fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (directory_fd >= 0) {
    ::fsync(directory_fd);
    ::close(directory_fd);
  }
}

// Counts the bytes a producer writes for one tensor and passes them to the file.
class CountingSink final : public TensorDataSink {
 public:
  CountingSink(TemporaryFile& file, const SafetensorsEntry& entry, std::uint64_t expected_bytes)
      : file_(file), entry_(entry), expected_bytes_(expected_bytes) {}

  void write(std::span<const std::byte> bytes) override {
    if (bytes.size() > expected_bytes_ - written_bytes_) {
      throw InvalidInputError(fmt::format(
          "{}: tensor \"{}\": the data writer produced more than the {} bytes of shape {} with "
          "dtype {}",
          file_.target().string(), entry_.name, expected_bytes_, shape_str(entry_.shape),
          dtype_name(entry_.dtype)));
    }
    file_.write(bytes);
    written_bytes_ += bytes.size();
  }

  void write_zeros(std::uint64_t count) override {
    if (count > expected_bytes_ - written_bytes_) {
      throw InvalidInputError(fmt::format(
          "{}: tensor \"{}\": the data writer produced more than the {} bytes of shape {} with "
          "dtype {}",
          file_.target().string(), entry_.name, expected_bytes_, shape_str(entry_.shape),
          dtype_name(entry_.dtype)));
    }
    file_.skip(count);
    written_bytes_ += count;
  }

  void check_complete() const {
    if (written_bytes_ != expected_bytes_) {
      throw InvalidInputError(fmt::format(
          "{}: tensor \"{}\": the data writer produced {} bytes but shape {} with dtype {} needs "
          "{} bytes",
          file_.target().string(), entry_.name, written_bytes_, shape_str(entry_.shape),
          dtype_name(entry_.dtype), expected_bytes_));
    }
  }

 private:
  TemporaryFile& file_;
  const SafetensorsEntry& entry_;
  std::uint64_t expected_bytes_;
  std::uint64_t written_bytes_ = 0;
};

// An entry with its validated size, element size and stored dtype name.
struct SizedEntry {
  const SafetensorsEntry* entry;
  std::string_view stored_dtype;
  std::size_t element_bytes;
  std::uint64_t bytes;
};

// Validates every entry before any file is created and returns their sizes.
std::vector<SizedEntry> size_entries(const fs::path& target,
                                     const std::vector<SafetensorsEntry>& entries) {
  const auto fail = [&target](const std::string& name, const std::string& message) {
    throw InvalidInputError(fmt::format("{}: tensor \"{}\": {}", target.string(), name, message));
  };
  std::set<std::string_view> names;
  std::vector<SizedEntry> sized;
  sized.reserve(entries.size());
  for (const SafetensorsEntry& entry : entries) {
    if (entry.name.empty() || entry.name == "__metadata__") {
      fail(entry.name, "invalid tensor name; names must be non-empty and not \"__metadata__\"");
    }
    if (!names.insert(entry.name).second) {
      fail(entry.name, "name given twice; tensor names must be unique");
    }
    if (!entry.write_data) {
      fail(entry.name, "entry has no data writer");
    }
    const std::string_view stored = safetensors_format::stored_dtype_name(entry.dtype);
    const std::size_t element_bytes = safetensors_format::find_stored_dtype(stored)->element_bytes;
    std::uint64_t count = 1;
    for (const std::int64_t size : entry.shape) {
      if (size < 0) {
        fail(entry.name, fmt::format("shape {} has a negative dimension", shape_str(entry.shape)));
      }
      if (__builtin_mul_overflow(count, static_cast<std::uint64_t>(size), &count)) {
        fail(entry.name, fmt::format("shape {} is too large", shape_str(entry.shape)));
      }
    }
    std::uint64_t bytes = 0;
    if (__builtin_mul_overflow(count, element_bytes, &bytes)) {
      fail(entry.name, fmt::format("shape {} is too large", shape_str(entry.shape)));
    }
    sized.push_back({&entry, stored, element_bytes, bytes});
  }
  return sized;
}

// The header bytes (length prefix included) and the order in which tensors follow it.
struct FileLayout {
  std::string header;
  std::vector<SizedEntry> order;
};

FileLayout lay_out_file(const fs::path& target, std::vector<SizedEntry> entries,
                        const SafetensorsMetadata& metadata) {
  std::stable_sort(entries.begin(), entries.end(), [](const SizedEntry& a, const SizedEntry& b) {
    return a.element_bytes > b.element_bytes;
  });

  json header = json::object();
  if (!metadata.empty()) {
    header["__metadata__"] = metadata;
  }
  std::uint64_t offset = 0;
  for (const SizedEntry& sized : entries) {
    header[sized.entry->name] = {{"dtype", sized.stored_dtype},
                                 {"shape", sized.entry->shape},
                                 {"data_offsets", {offset, offset + sized.bytes}}};
    offset += sized.bytes;
  }

  std::string text;
  try {
    text = header.dump();
  } catch (const json::type_error& error) {
    throw InvalidInputError(
        fmt::format("{}: a tensor name or metadata string is not valid UTF-8: {}", target.string(),
                    error.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');

  FileLayout layout;
  const std::uint64_t length = text.size();
  for (int i = 0; i < 8; ++i) {
    layout.header.push_back(static_cast<char>((length >> (8 * i)) & 0xFF));
  }
  layout.header += text;
  layout.order = std::move(entries);
  return layout;
}

// Writes the header and every tensor's bytes. The caller calls finish() and commit().
void write_layout(TemporaryFile& file, const FileLayout& layout) {
  file.write(std::as_bytes(std::span(layout.header)));
  for (const SizedEntry& sized : layout.order) {
    CountingSink sink(file, *sized.entry, sized.bytes);
    sized.entry->write_data(sink);
    sink.check_complete();
  }
}

// Splits entries, in order, into groups of at most `max_bytes`. A larger entry gets a group of
// its own.
std::vector<std::vector<SizedEntry>> split_into_shards(const std::vector<SizedEntry>& entries,
                                                       std::uint64_t max_bytes) {
  std::vector<std::vector<SizedEntry>> shards;
  std::uint64_t shard_bytes = 0;
  for (const SizedEntry& sized : entries) {
    if (shards.empty() || (!shards.back().empty() && sized.bytes > max_bytes - shard_bytes)) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(sized);
    shard_bytes += std::min(sized.bytes, max_bytes);
  }
  return shards;
}

}  // namespace

void TensorDataSink::write_zeros(std::uint64_t count) {
  const std::vector<std::byte> zeros(
      static_cast<std::size_t>(std::min<std::uint64_t>(count, kWriteBufferBytes)));
  while (count > 0) {
    const std::size_t chunk =
        static_cast<std::size_t>(std::min<std::uint64_t>(count, zeros.size()));
    write(std::span(zeros.data(), chunk));
    count -= chunk;
  }
}

SafetensorsEntry safetensors_entry(std::string name, Tensor tensor) {
  if (!tensor.defined() || tensor.is_dry() || !tensor.device().is_cpu()) {
    throw InvalidInputError(fmt::format(
        "tensor \"{}\" cannot be written: it must be a defined CPU tensor with data, found {}",
        name, tensor.defined() ? tensor.describe() : std::string("an undefined tensor")));
  }
  SafetensorsEntry entry;
  entry.name = std::move(name);
  entry.dtype = tensor.dtype();
  entry.shape = tensor.shape();
  entry.write_data = [tensor = std::move(tensor)](TensorDataSink& sink) {
    if (tensor.numel() == 0) {
      return;
    }
    const Tensor contiguous = tensor.contiguous();
    const auto* data = static_cast<const std::byte*>(contiguous.data());
    sink.write(std::span(data, contiguous.nbytes()));
  };
  return entry;
}

SafetensorsEntry zero_safetensors_entry(std::string name, DType dtype, Shape shape) {
  SafetensorsEntry entry;
  entry.name = std::move(name);
  entry.dtype = dtype;
  entry.shape = std::move(shape);
  entry.write_data = [dtype, shape = entry.shape](TensorDataSink& sink) {
    sink.write_zeros(dtype_bytes(dtype, static_cast<std::size_t>(shape_numel(shape))));
  };
  return entry;
}

void write_safetensors(const fs::path& path, const std::vector<SafetensorsEntry>& entries,
                       const SafetensorsMetadata& metadata) {
  const FileLayout layout = lay_out_file(path, size_entries(path, entries), metadata);
  TemporaryFile file(path);
  write_layout(file, layout);
  file.finish();
  file.commit();
}

void write_safetensors(const fs::path& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const SafetensorsMetadata& metadata) {
  std::vector<SafetensorsEntry> entries;
  entries.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    entries.push_back(safetensors_entry(name, tensor));
  }
  write_safetensors(path, entries, metadata);
}

fs::path write_sharded_safetensors(const fs::path& directory, std::string_view base_name,
                                   const std::vector<SafetensorsEntry>& entries,
                                   std::uint64_t max_shard_bytes,
                                   const SafetensorsMetadata& metadata) {
  fs::path index_path = directory / (std::string(base_name) + ".safetensors.index.json");
  if (base_name.empty() || fs::path(base_name).has_parent_path()) {
    throw InvalidInputError(fmt::format(
        "invalid shard base name \"{}\"; expected a plain file name such as \"model\"", base_name));
  }
  if (max_shard_bytes == 0) {
    throw InvalidInputError(fmt::format(
        "{}: maximum shard size is 0 bytes; expected a positive size", index_path.string()));
  }
  const std::vector<std::vector<SizedEntry>> shards =
      split_into_shards(size_entries(index_path, entries), max_shard_bytes);

  // Write every shard to a temporary file before renaming any of them.
  std::vector<std::unique_ptr<TemporaryFile>> files;
  json weight_map = json::object();
  std::uint64_t total_bytes = 0;
  for (std::size_t i = 0; i < shards.size(); ++i) {
    const std::string shard_name =
        fmt::format("{}-{:05}-of-{:05}.safetensors", base_name, i + 1, shards.size());
    const fs::path shard_path = directory / shard_name;
    const FileLayout layout = lay_out_file(shard_path, shards[i], metadata);
    files.push_back(std::make_unique<TemporaryFile>(shard_path));
    write_layout(*files.back(), layout);
    files.back()->finish();
    for (const SizedEntry& sized : shards[i]) {
      weight_map[sized.entry->name] = shard_name;
      total_bytes += sized.bytes;
    }
  }

  json index_metadata(metadata);
  index_metadata["total_size"] = total_bytes;
  const std::string index_text =
      json{{"metadata", index_metadata}, {"weight_map", weight_map}}.dump(2) + "\n";
  files.push_back(std::make_unique<TemporaryFile>(index_path));
  files.back()->write(std::as_bytes(std::span(index_text)));
  files.back()->finish();

  for (const std::unique_ptr<TemporaryFile>& file : files) {
    file->commit();
  }
  return index_path;
}

}  // namespace ethereal
