// Opening image files, format detection by signature, and the temporary-file protocol of
// write_png. The codecs themselves live in image_png.cpp and image_jpeg.cpp.
#include "io/image_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <system_error>

#include "io/image_codecs.h"
#include "io/image_exif.h"
#include "runtime/error.h"

namespace ethereal {
namespace image_codecs {

void throw_invalid_image(const std::filesystem::path& path, std::string_view problem,
                         std::string_view remedy) {
  throw InvalidInputError("failed to read image '" + path.string() + "': " + std::string(problem) +
                          ". " + std::string(remedy));
}

void check_image_size(const std::filesystem::path& path, const char* format, std::uint64_t width,
                      std::uint64_t height) {
  const std::string size = std::to_string(width) + "x" + std::to_string(height);
  if (width == 0 || height == 0) {
    throw_invalid_image(path, std::string("the ") + format + " header gives an empty size " + size,
                        "The file is damaged; re-export or re-download the image");
  }
  if (width > static_cast<std::uint64_t>(kMaxImageSide) ||
      height > static_cast<std::uint64_t>(kMaxImageSide)) {
    throw_invalid_image(path,
                        "the image is " + size + " pixels, over the limit of " +
                            std::to_string(kMaxImageSide) + " pixels per side",
                        "Downscale the image before editing it");
  }
  if (width * height > static_cast<std::uint64_t>(kMaxImagePixels)) {
    throw_invalid_image(path,
                        "the image is " + size + " = " + std::to_string(width * height) +
                            " pixels, over the limit of " + std::to_string(kMaxImagePixels) +
                            " pixels",
                        "Downscale the image before editing it");
  }
}

}  // namespace image_codecs

namespace {

using image_codecs::throw_invalid_image;

constexpr std::string_view kReexportRemedy = "Re-export or re-download the image";

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};
using FilePointer = std::unique_ptr<std::FILE, FileCloser>;

enum class Signature { kPng, kJpeg, kPartialPng, kOther };

constexpr std::array<std::uint8_t, 8> kPngSignature = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};

bool starts_with(std::string_view bytes, std::string_view prefix) {
  return bytes.substr(0, prefix.size()) == prefix;
}

// Names formats that users commonly pass by mistake, from their signatures. Returns an empty
// string for anything else.
std::string recognise_other_format(std::string_view head) {
  if (starts_with(head, "GIF87a") || starts_with(head, "GIF89a")) {
    return "GIF";
  }
  if (starts_with(head, "RIFF") && head.substr(8, 4) == "WEBP") {
    return "WebP";
  }
  if (starts_with(head, "BM")) {
    return "BMP";
  }
  if (starts_with(head, std::string_view("II*\0", 4)) ||
      starts_with(head, std::string_view("MM\0*", 4))) {
    return "TIFF";
  }
  if (head.substr(4, 4) == "ftyp") {
    const std::string_view brand = head.substr(8, 4);
    if (brand == "avif" || brand == "avis") {
      return "AVIF";
    }
    if (brand == "heic" || brand == "heix" || brand == "mif1" || brand == "msf1") {
      return "HEIF";
    }
  }
  if (starts_with(head, std::string_view("\0\0\0\x0CjP  ", 8)) ||
      starts_with(head, "\xFF\x4F\xFF\x51")) {
    return "JPEG 2000";
  }
  if (starts_with(head, "\xFF\x0A") || starts_with(head, std::string_view("\0\0\0\x0CJXL ", 8))) {
    return "JPEG XL";
  }
  if (starts_with(head, "8BPS")) {
    return "Photoshop (PSD)";
  }
  if (starts_with(head, "qoif")) {
    return "QOI";
  }
  return {};
}

Signature detect_signature(std::string_view head) {
  const std::string_view png(reinterpret_cast<const char*>(kPngSignature.data()),
                             kPngSignature.size());
  if (starts_with(head, png)) {
    return Signature::kPng;
  }
  if (starts_with(head, "\xFF\xD8\xFF")) {
    return Signature::kJpeg;
  }
  if (head.size() < png.size() && starts_with(png, head)) {
    return Signature::kPartialPng;
  }
  return Signature::kOther;
}

std::string hex_bytes(std::string_view bytes) {
  std::string hex;
  for (const char c : bytes) {
    char buffer[4];
    std::snprintf(buffer, sizeof(buffer), "%02x ",
                  static_cast<unsigned>(static_cast<std::uint8_t>(c)));
    hex += buffer;
  }
  if (!hex.empty()) {
    hex.pop_back();
  }
  return hex;
}

FilePointer open_for_reading(const std::filesystem::path& path) {
  std::error_code error;
  const std::filesystem::file_status status = std::filesystem::status(path, error);
  if (status.type() == std::filesystem::file_type::not_found) {
    throw_invalid_image(path, "the file does not exist", "Check the path");
  }
  if (status.type() == std::filesystem::file_type::directory) {
    throw_invalid_image(path, "the path is a directory, not a file",
                        "Pass the path of an image file");
  }
  FilePointer file(std::fopen(path.c_str(), "rb"));
  if (file == nullptr) {
    throw_invalid_image(path, std::string("cannot open the file: ") + std::strerror(errno),
                        "Check that the file exists and is readable");
  }
  return file;
}

// Reads the first bytes of `file` and rewinds it.
std::string read_head(std::FILE* file, const std::filesystem::path& path) {
  std::string head(16, '\0');
  const std::size_t count = std::fread(head.data(), 1, head.size(), file);
  if (std::ferror(file) || std::fseek(file, 0, SEEK_SET) != 0) {
    throw IoError("failed to read image '" + path.string() + "': " + std::strerror(errno) +
                  ". Check that the disk or network file system is available");
  }
  head.resize(count);
  return head;
}

[[noreturn]] void throw_unsupported_format(const std::filesystem::path& path,
                                           std::string_view head) {
  const std::string format = recognise_other_format(head);
  if (!format.empty()) {
    throw_invalid_image(path, "the file is a " + format + " image; only PNG and JPEG are supported",
                        "Convert the image to PNG or JPEG");
  }
  throw_invalid_image(path,
                      "the file is not a PNG or JPEG image (it starts with bytes " +
                          hex_bytes(head.substr(0, 8)) + ")",
                      "Pass a PNG or JPEG file, or convert the image to one of these formats");
}

}  // namespace

const char* image_format_name(ImageFormat format) {
  return format == ImageFormat::kJpeg ? "JPEG" : "PNG";
}

ImageFile read_image_file(const std::filesystem::path& path) {
  FilePointer file = open_for_reading(path);
  const std::string head = read_head(file.get(), path);
  if (head.empty()) {
    throw_invalid_image(path, "the file is empty (0 bytes)", kReexportRemedy);
  }

  ImageFile result;
  switch (detect_signature(head)) {
    case Signature::kPng: result = image_codecs::decode_png(file.get(), path); break;
    case Signature::kJpeg: result = image_codecs::decode_jpeg(file.get(), path); break;
    case Signature::kPartialPng:
      throw_invalid_image(path,
                          "the file is truncated: it has " + std::to_string(head.size()) +
                              " bytes, fewer than the 8-byte PNG signature",
                          kReexportRemedy);
    case Signature::kOther: throw_unsupported_format(path, head);
  }
  result.image = apply_exif_orientation(result.image, result.exif_orientation);
  return result;
}

Image read_image(const std::filesystem::path& path) {
  return read_image_file(path).image;
}

std::vector<PngTextChunk> read_png_text(const std::filesystem::path& path) {
  ImageFile file = read_image_file(path);
  if (file.format != ImageFormat::kPng) {
    throw InvalidInputError("failed to read PNG text from '" + path.string() + "': the file is a " +
                            image_format_name(file.format) +
                            " image, and only PNG files carry text chunks. Pass a PNG file");
  }
  return std::move(file.text);
}

}  // namespace ethereal
