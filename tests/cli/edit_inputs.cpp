#include "cli/edit_inputs.h"

#include <cstdint>

#include "io/image_file.h"
#include "models/tiny_model.h"
#include "support/files.h"

namespace ethereal::test {

std::filesystem::path EditInputsTest::root_;

void EditInputsTest::SetUpTestSuite() {
  root_ = test_support::create_temporary_directory("edit_inputs");
  write_tiny_model(root_ / "model", 7);
  Image photo(40, 30, 3);
  for (int y = 0; y < 30; ++y) {
    for (int x = 0; x < 40; ++x) {
      photo.at(x, y, 0) = static_cast<std::uint8_t>(6 * x);
      photo.at(x, y, 1) = static_cast<std::uint8_t>(8 * y);
      photo.at(x, y, 2) = 128;
    }
  }
  write_png(root_ / "photo.png", photo);
}

void EditInputsTest::TearDownTestSuite() {
  std::filesystem::remove_all(root_);
}

std::vector<std::string> EditInputsTest::edit_arguments_with(
    const std::filesystem::path& output, const std::vector<std::string>& options) {
  std::vector<std::string> arguments = {"edit",
                                        "--model",
                                        (root_ / "model").string(),
                                        "--image",
                                        (root_ / "photo.png").string(),
                                        "--output",
                                        output.string()};
  arguments.insert(arguments.end(), options.begin(), options.end());
  return arguments;
}

}  // namespace ethereal::test
