// Helpers shared by the image and resampling tests: paths of the committed test data, raw
// file access, a temporary directory and a check of error type and message.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace ethereal::image_testing {

// tests/data/io/image: files made by tools/make_image_test_data.py.
inline std::filesystem::path image_data(std::string_view name) {
  return std::filesystem::path(ETHEREAL_TEST_DATA_DIR) / "io" / "image" / name;
}

// tests/data/io/resample: files made by tools/make_resample_reference.py.
inline std::filesystem::path resample_data(std::string_view name) {
  return std::filesystem::path(ETHEREAL_TEST_DATA_DIR) / "io" / "resample" / name;
}

inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream stream(path, std::ios::binary);
  if (!stream) {
    throw std::runtime_error("cannot open test file " + path.string());
  }
  return std::string(std::istreambuf_iterator<char>(stream), std::istreambuf_iterator<char>());
}

inline void write_bytes(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream stream(path, std::ios::binary | std::ios::trunc);
  stream.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!stream) {
    throw std::runtime_error("cannot write test file " + path.string());
  }
}

// A fresh directory under ::testing::TempDir(), removed with its contents at scope exit.
class ScratchDirectory {
 public:
  ScratchDirectory() {
    std::string pattern = std::filesystem::path(::testing::TempDir()) / "ethereal-img-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error("mkdtemp failed for " + pattern);
    }
    path_ = pattern;
  }
  ~ScratchDirectory() {
    std::error_code ignored;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::add, ignored);
    std::filesystem::remove_all(path_, ignored);
  }
  ScratchDirectory(const ScratchDirectory&) = delete;
  ScratchDirectory& operator=(const ScratchDirectory&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(std::string_view name) const { return path_ / name; }

  std::vector<std::string> file_names() const {
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(path_)) {
      names.push_back(entry.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::filesystem::path path_;
};

// Runs `action`, expects an exception of type E, and returns its message ("" and a test
// failure when nothing or something else is thrown).
template <typename E>
std::string message_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const E& error) {
    return error.what();
  } catch (const std::exception& error) {
    ADD_FAILURE() << "unexpected exception type, message: " << error.what();
    return {};
  }
  ADD_FAILURE() << "no exception was thrown";
  return {};
}

}  // namespace ethereal::image_testing
