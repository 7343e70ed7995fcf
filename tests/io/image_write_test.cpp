// Tests of write_png: round trips through read_image, text chunks, and that failures leave
// neither a temporary file nor a changed target.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include "io/image_file.h"
#include "runtime/error.h"
#include "support/errors.h"
#include "support/files.h"

namespace ethereal {
namespace {

using test_support::error_message;
using test_support::read_file;
using test_support::TemporaryDirectory;
using test_support::write_file;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// An image of odd size whose values cover the whole 0..255 range.
Image pattern_image(int width, int height, int channels) {
  Image image(width, height, channels);
  std::uint32_t state = 12345;
  for (std::uint8_t& value : image.pixels()) {
    state = state * 1664525u + 1013904223u;
    value = static_cast<std::uint8_t>(state >> 24);
  }
  return image;
}

TEST(WritePng, RoundTripGrayRgbRgba) {
  TemporaryDirectory scratch;
  for (const int channels : {1, 3, 4}) {
    SCOPED_TRACE("channels " + std::to_string(channels));
    const Image image = pattern_image(13, 7, channels);
    const auto path = scratch / ("out" + std::to_string(channels) + ".png");
    write_png(path, image);
    const ImageFile file = read_image_file(path);
    EXPECT_EQ(file.format, ImageFormat::kPng);
    EXPECT_EQ(file.image, image);
    EXPECT_TRUE(file.text.empty());
  }
}

TEST(WritePng, TextChunksRoundTrip) {
  TemporaryDirectory scratch;
  const auto path = scratch / "text.png";
  const std::vector<PngTextChunk> text = {
      {"Title", "plain ASCII"},
      {"Comment", "Caf\u00e9"},             // Latin-1: tEXt
      {"Prompt", "a cat \u732b on a mat"},  // outside Latin-1: iTXt
      {"Empty", ""},
      {"Comment", "a second chunk with the same key"},
  };
  write_png(path, pattern_image(3, 2, 3), text);
  EXPECT_EQ(read_png_text(path), text);

  // The chunk types and encodings as stored in the file.
  const std::string bytes = read_file(path);
  EXPECT_THAT(bytes, HasSubstr(std::string("tEXtComment\0Caf\xE9", 16)));
  EXPECT_THAT(bytes, HasSubstr(std::string("iTXtPrompt\0\0\0", 13)));
  EXPECT_THAT(bytes, HasSubstr("a cat \xE7\x8C\xAB on a mat"));
}

TEST(WritePng, ReplacesExistingFileAndLeavesNoTemporary) {
  TemporaryDirectory scratch;
  const auto path = scratch / "out.png";
  write_png(path, pattern_image(4, 4, 3));
  const Image second = pattern_image(9, 5, 1);
  write_png(path, second, {{"Software", "ethereal"}});
  EXPECT_EQ(read_image(path), second);
  EXPECT_THAT(scratch.file_names(), ElementsAre("out.png"));
}

TEST(WritePng, RelativePathInCurrentDirectory) {
  TemporaryDirectory scratch;
  const auto previous = std::filesystem::current_path();
  std::filesystem::current_path(scratch.path());
  write_png("relative.png", pattern_image(2, 3, 4));
  std::filesystem::current_path(previous);
  EXPECT_EQ(read_image(scratch / "relative.png"), pattern_image(2, 3, 4));
  EXPECT_THAT(scratch.file_names(), ElementsAre("relative.png"));
}

TEST(WritePngErrors, InvalidTextKeys) {
  TemporaryDirectory scratch;
  const auto path = scratch / "out.png";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "it has 0 characters, expected 1 to 79"},
      {std::string(80, 'k'), "it has 80 characters, expected 1 to 79"},
      {" Title", "leading, trailing or double space"},
      {"Two  spaces", "leading, trailing or double space"},
      {"Line\nbreak", "non-printable character code 10"},
      {"\u732b", "outside Latin-1"},
  };
  for (const auto& [key, problem] : cases) {
    SCOPED_TRACE(key);
    const std::string message = error_message<InvalidInputError>([&] {
      write_png(path, pattern_image(2, 2, 3), {{key, "value"}});
    });
    EXPECT_THAT(message, AllOf(HasSubstr("failed to write image '" + path.string() + "'"),
                               HasSubstr("invalid PNG text key"), HasSubstr(problem)));
  }
  EXPECT_TRUE(scratch.file_names().empty());
}

TEST(WritePngErrors, InvalidUtf8Value) {
  TemporaryDirectory scratch;
  const auto path = scratch / "out.png";
  const std::string message = error_message<InvalidInputError>([&] {
    write_png(path, pattern_image(2, 2, 3), {{"Comment", "bad \xC3\x28 bytes"}});
  });
  EXPECT_THAT(message, AllOf(HasSubstr(path.string()), HasSubstr("'Comment'"),
                             HasSubstr("is not valid UTF-8")));
  EXPECT_TRUE(scratch.file_names().empty());
}

TEST(WritePngErrors, EmptyImage) {
  TemporaryDirectory scratch;
  const auto path = scratch / "out.png";
  EXPECT_THAT(error_message<InvalidInputError>([&] { write_png(path, Image()); }),
              AllOf(HasSubstr(path.string()), HasSubstr("the image is empty")));
  EXPECT_TRUE(scratch.file_names().empty());
}

TEST(WritePngErrors, TargetIsDirectoryLeavesNoTemporary) {
  TemporaryDirectory scratch;
  const auto target = scratch / "taken.png";
  std::filesystem::create_directory(target);
  write_file(target / "inside.txt", "keep");
  const std::string message =
      error_message<IoError>([&] { write_png(target, pattern_image(3, 3, 3)); });
  EXPECT_THAT(message, AllOf(HasSubstr("failed to write image '" + target.string() + "'"),
                             HasSubstr("cannot rename the temporary file")));
  EXPECT_THAT(scratch.file_names(), ElementsAre("taken.png"));
  EXPECT_EQ(read_file(target / "inside.txt"), "keep");
}

TEST(WritePngErrors, MissingDirectory) {
  TemporaryDirectory scratch;
  const auto target = scratch / "no_such_dir" / "out.png";
  const std::string message =
      error_message<IoError>([&] { write_png(target, pattern_image(3, 3, 3)); });
  EXPECT_THAT(message,
              AllOf(HasSubstr(target.string()), HasSubstr("cannot create a temporary file"),
                    HasSubstr("No such file or directory"),
                    HasSubstr("Check that the directory exists and is writable")));
  EXPECT_TRUE(scratch.file_names().empty());
}

TEST(WritePngErrors, ReadOnlyDirectoryLeavesTargetUntouched) {
  if (::geteuid() == 0) {
    GTEST_SKIP() << "root ignores directory permissions, so the write cannot fail";
  }
  TemporaryDirectory scratch;
  const auto directory = scratch / "read_only";
  std::filesystem::create_directory(directory);
  const auto target = directory / "out.png";
  write_file(target, "old contents");
  ASSERT_EQ(::chmod(directory.c_str(), 0555), 0);

  const std::string message =
      error_message<IoError>([&] { write_png(target, pattern_image(3, 3, 3)); });
  EXPECT_THAT(message, AllOf(HasSubstr(target.string()), HasSubstr("Permission denied")));
  ::chmod(directory.c_str(), 0755);
  EXPECT_EQ(read_file(target), "old contents");
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(directory),
                          std::filesystem::directory_iterator()),
            1);
}

}  // namespace
}  // namespace ethereal
