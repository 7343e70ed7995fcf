#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/edit_inputs.h"
#include "cli/run_command.h"
#include "io/image_file.h"
#include "support/files.h"

namespace ethereal::test {
namespace {

namespace fs = std::filesystem;

// The tiny model and the photo are written once for all tests of this file. Edits run at 64x64
// output with two steps to keep the suite fast.
class EditCommandTest : public EditInputsTest {
 protected:
  static std::vector<std::string> edit_arguments(const fs::path& output) {
    return edit_arguments_with(output, {"--prompt", "make the sky green", "--steps", "2", "--width",
                                        "64", "--height", "64", "--seed", "11"});
  }
};

TEST_F(EditCommandTest, WritesPngWithMetadataAndJson) {
  const fs::path output = root_ / "edited.png";
  std::vector<std::string> arguments = edit_arguments(output);
  arguments.push_back("--json");
  const CommandResult result = run_ethereal(arguments);
  ASSERT_EQ(result.exit_status, 0) << result.standard_error;

  const nlohmann::json document = nlohmann::json::parse(result.standard_output);
  EXPECT_EQ(document["output"], output.string());
  EXPECT_EQ(document["width"], 64);
  EXPECT_EQ(document["height"], 64);
  EXPECT_EQ(document["steps"], 2);
  EXPECT_GT(document["peak_allocated_bytes"].get<std::int64_t>(), 0);
  EXPECT_TRUE(document["stage_times_s"].contains("denoising"));

  const Image image = read_image(output);
  EXPECT_EQ(image.width(), 64);
  EXPECT_EQ(image.height(), 64);
  std::map<std::string, std::string> text;
  for (const PngTextChunk& chunk : read_png_text(output)) {
    text[chunk.key] = chunk.value;
  }
  EXPECT_EQ(text["prompt"], "make the sky green");
  EXPECT_EQ(text["seed"], "11");
  EXPECT_EQ(text["steps"], "2");
  EXPECT_EQ(text["cfg_scale"], "4");
  EXPECT_EQ(text["negative_prompt"], " ");
  EXPECT_NE(text["software"].find("ethereal"), std::string::npos);
  EXPECT_EQ(text["model"], (root_ / "model").string());
}

TEST_F(EditCommandTest, SameSeedGivesSameImage) {
  const fs::path first = root_ / "first.png";
  const fs::path second = root_ / "second.png";
  ASSERT_EQ(run_ethereal(edit_arguments(first)).exit_status, 0);
  ASSERT_EQ(run_ethereal(edit_arguments(second)).exit_status, 0);
  EXPECT_EQ(read_image(first), read_image(second));

  std::vector<std::string> other_seed = edit_arguments(root_ / "third.png");
  other_seed.back() = "12";
  ASSERT_EQ(run_ethereal(other_seed).exit_status, 0);
  EXPECT_NE(read_image(first), read_image(root_ / "third.png"));
}

struct BadInputCase {
  std::string name;
  std::vector<std::string> replace;  // option, value
  std::string expected_message;
};

TEST_F(EditCommandTest, BadInputExitsTwoWithoutOutput) {
  fs::create_directories(root_ / "broken_model");
  std::ofstream(root_ / "not_an_image.png") << "hello, this is text";
  const std::string photo = test_support::read_file(root_ / "photo.png");
  test_support::write_file(root_ / "truncated.png", photo.substr(0, photo.size() / 2));
  const BadInputCase cases[] = {
      {"missing image", {"--image", (root_ / "nope.png").string()}, "nope.png"},
      {"not an image", {"--image", (root_ / "not_an_image.png").string()}, "not_an_image.png"},
      {"truncated image", {"--image", (root_ / "truncated.png").string()}, "truncated.png"},
      {"empty prompt", {"--prompt", "   "}, "prompt is empty"},
      {"model without folders", {"--model", (root_ / "broken_model").string()}, "broken_model"},
      {"missing model", {"--model", (root_ / "no_model").string()}, "no_model"},
      {"jpeg output", {"--output", (root_ / "out.jpg").string()}, "must name a .png file"},
  };
  for (const BadInputCase& c : cases) {
    const fs::path output = root_ / "bad.png";
    std::vector<std::string> arguments = edit_arguments(output);
    for (std::size_t i = 0; i + 1 < arguments.size(); ++i) {
      if (arguments[i] == c.replace[0]) {
        arguments[i + 1] = c.replace[1];
      }
    }
    const CommandResult result = run_ethereal(arguments);
    EXPECT_EQ(result.exit_status, 2) << c.name << ": " << result.standard_error;
    EXPECT_NE(result.standard_error.find(c.expected_message), std::string::npos)
        << c.name << ": " << result.standard_error;
    EXPECT_FALSE(fs::exists(output)) << c.name;
  }
}

TEST_F(EditCommandTest, BrokenTokenizerFileExitsTwo) {
  const fs::path model = root_ / "bad_tokenizer_model";
  fs::copy(root_ / "model", model, fs::copy_options::recursive);
  std::ofstream(model / "tokenizer" / "tokenizer.json") << "{ \"model\": ";
  std::vector<std::string> arguments = edit_arguments(root_ / "never.png");
  arguments[2] = model.string();
  const CommandResult result = run_ethereal(arguments);
  EXPECT_EQ(result.exit_status, 2) << result.standard_error;
  EXPECT_NE(result.standard_error.find("tokenizer.json"), std::string::npos)
      << result.standard_error;
  EXPECT_FALSE(fs::exists(root_ / "never.png"));
}

}  // namespace
}  // namespace ethereal::test
