// Paths of the committed test data of the image and resampling tests.
#pragma once

#include <filesystem>
#include <string_view>

namespace ethereal::image_testing {

// tests/data/io/image: files made by tools/make_image_test_data.py.
inline std::filesystem::path image_data(std::string_view name) {
  return std::filesystem::path(ETHEREAL_TEST_DATA_DIR) / "io" / "image" / name;
}

// tests/data/io/resample: files made by tools/make_resample_reference.py.
inline std::filesystem::path resample_data(std::string_view name) {
  return std::filesystem::path(ETHEREAL_TEST_DATA_DIR) / "io" / "resample" / name;
}

}  // namespace ethereal::image_testing
