// write_png: encode into a temporary file next to the target, then rename it over the target.
// rename() within one directory is atomic on POSIX file systems, so readers of the target see
// either the old file or the complete new one, and a failure leaves the target untouched.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>

#include "io/image_codecs.h"
#include "io/image_file.h"
#include "runtime/error.h"

namespace ethereal {
namespace {

[[noreturn]] void throw_write_error(const std::filesystem::path& target, const std::string& problem,
                                    int error_number, const std::string& remedy) {
  throw IoError("failed to write image '" + target.string() + "': " + problem + ": " +
                std::strerror(error_number) + ". " + remedy);
}

std::string random_suffix() {
  static thread_local std::mt19937_64 generator{std::random_device{}() ^
                                                static_cast<std::uint64_t>(::getpid())};
  char buffer[17];
  std::snprintf(buffer, sizeof(buffer), "%016llx", static_cast<unsigned long long>(generator()));
  return buffer;
}

// A new file in the target's directory. Until commit() renames it over the target, the
// destructor closes and deletes it, on every exit path.
class TemporaryFile {
 public:
  explicit TemporaryFile(const std::filesystem::path& target) : target_(target) {
    std::filesystem::path directory = target.parent_path();
    if (directory.empty()) {
      directory = ".";
    }
    constexpr int kAttempts = 16;  // name collisions with another writer are the only retry case
    for (int attempt = 0; attempt < kAttempts; ++attempt) {
      std::string name = ".";
      name += target.filename().string();
      name += ".tmp-";
      name += random_suffix();
      path_ = directory / name;
      const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd >= 0) {
        file_ = ::fdopen(fd, "wb");
        if (file_ == nullptr) {
          const int error_number = errno;
          ::close(fd);
          ::unlink(path_.c_str());
          throw_write_error(target_, "cannot open a temporary file", error_number,
                            "Check free memory and file descriptor limits");
        }
        return;
      }
      if (errno != EEXIST) {
        throw_write_error(target_, "cannot create a temporary file in '" + directory.string() + "'",
                          errno, "Check that the directory exists and is writable");
      }
    }
    throw_write_error(target_,
                      "cannot find a free temporary file name in '" + directory.string() + "'",
                      EEXIST, "Remove stale '.*.tmp-*' files from the directory");
  }

  ~TemporaryFile() {
    if (file_ != nullptr) {
      std::fclose(file_);
    }
    if (!committed_) {
      ::unlink(path_.c_str());
    }
  }

  TemporaryFile(const TemporaryFile&) = delete;
  TemporaryFile& operator=(const TemporaryFile&) = delete;

  std::FILE* file() const { return file_; }

  // Flushes the data to the disk, closes the file and renames it over the target.
  void commit() {
    if (std::fflush(file_) != 0) {
      throw_write_error(target_, "cannot write the data", errno,
                        "Check free disk space and that the directory is writable");
    }
    // fsync before rename, so a crash cannot leave the target renamed but empty.
    // File systems without fsync support (EINVAL) skip this step.
    if (::fsync(::fileno(file_)) != 0 && errno != EINVAL) {
      throw_write_error(target_, "cannot flush the data to the disk", errno,
                        "Check free disk space and the health of the disk");
    }
    std::FILE* file = file_;
    file_ = nullptr;
    if (std::fclose(file) != 0) {
      throw_write_error(target_, "cannot close the temporary file", errno,
                        "Check free disk space and that the directory is writable");
    }
    if (std::rename(path_.c_str(), target_.c_str()) != 0) {
      throw_write_error(target_, "cannot rename the temporary file to the target", errno,
                        "Check that the target is not a directory and that the directory is "
                        "writable");
    }
    committed_ = true;
  }

 private:
  std::filesystem::path target_;
  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
  bool committed_ = false;
};

}  // namespace

void write_png(const std::filesystem::path& path, const Image& image,
               const std::vector<PngTextChunk>& text) {
  if (image.empty()) {
    throw InvalidInputError("failed to write image '" + path.string() +
                            "': the image is empty (0x0). Pass an image with pixels");
  }
  for (const PngTextChunk& chunk : text) {
    image_codecs::validate_png_text(path, chunk);
  }
  TemporaryFile temporary(path);
  image_codecs::encode_png(temporary.file(), path, image, text);
  temporary.commit();
}

}  // namespace ethereal
