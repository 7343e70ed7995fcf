// Temporary directories and whole-file reads and writes, shared by every test program.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace ethereal::test_support {

// Creates a new empty directory "<prefix>-XXXXXX" under ::testing::TempDir() and returns its
// path. The caller removes it. Throws std::runtime_error when mkdtemp fails.
std::filesystem::path create_temporary_directory(std::string_view prefix);

// A new empty directory under ::testing::TempDir(), removed with its contents at scope exit.
// The destructor first restores the owner's permissions on the directory itself, so a test may
// make it read-only.
class TemporaryDirectory {
 public:
  explicit TemporaryDirectory(std::string_view prefix = "ethereal");
  ~TemporaryDirectory();
  TemporaryDirectory(const TemporaryDirectory&) = delete;
  TemporaryDirectory& operator=(const TemporaryDirectory&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(std::string_view name) const { return path_ / name; }
  // The sorted names of the entries directly inside the directory.
  std::vector<std::string> file_names() const;

 private:
  std::filesystem::path path_;
};

// The bytes of the file at `path`. Throws std::runtime_error when it cannot be opened.
std::string read_file(const std::filesystem::path& path);

// Replaces the file at `path` with `bytes`. Throws std::runtime_error when writing fails.
void write_file(const std::filesystem::path& path, std::string_view bytes);

// The sorted names of the entries directly inside `directory`.
std::vector<std::string> file_names(const std::filesystem::path& directory);

}  // namespace ethereal::test_support
