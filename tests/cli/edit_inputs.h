// Inputs of the edit commands under test: the tiny model and a small photo.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

namespace ethereal::test {

// A fixture whose suite writes the tiny model (seed 7) to root_/model and a 40x30 RGB gradient
// photo to root_/photo.png before its first test, and removes root_ after its last.
class EditInputsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite();
  static void TearDownTestSuite();

  // The arguments "edit --model root_/model --image root_/photo.png --output <output>", then
  // `options`.
  static std::vector<std::string> edit_arguments_with(const std::filesystem::path& output,
                                                      const std::vector<std::string>& options);

  static std::filesystem::path root_;
};

}  // namespace ethereal::test
