// Reading PNG and JPEG files and writing PNG files.
//
// `read_image` detects the format from the first bytes of the file, never from its extension,
// and decodes with libpng or libjpeg(-turbo). Decoded images follow what Pillow 9.4 gives for
// the same file, because the reference diffusion pipelines load inputs with Pillow and then
// call `ImageOps.exif_transpose` and `convert("RGB")`:
//  - PNG: every color type and bit depth. Palettes are expanded to RGB, or RGBA when a tRNS
//    chunk is present. Gray with alpha becomes RGBA, and gray or RGB with a tRNS chunk gains
//    an alpha channel. 16-bit samples keep their high byte (v >> 8). That is what Pillow does
//    for 16-bit RGB, RGBA and gray-alpha, but for 16-bit gray without alpha Pillow clips the
//    value to 255 instead, an artifact of its 32-bit integer mode that we do not copy.
//    Interlaced (Adam7) files are supported. Gamma and color profiles are ignored, as in
//    Pillow. The EXIF orientation comes from an eXIf chunk, else from a "Raw profile type exif"
//    text chunk, else from tiff:Orientation in an "XML:com.adobe.xmp" text chunk, which is
//    the order Pillow 9.4 looks in.
//  - JPEG: decoded with the library's default settings (the same as Pillow: accurate integer
//    IDCT, smooth chroma upsampling), giving gray or RGB. CMYK and YCCK files are converted
//    to RGB with Pillow's formula, assuming Adobe's inverted CMYK as Pillow does. The EXIF
//    orientation comes from the first APP1 segment that starts with "Exif\0\0".
// The EXIF orientation is applied to the pixels (see io/image_exif.h).
//
// Every problem with the file is an InvalidInputError whose message names the file, states what
// is wrong and what to do: missing, empty, truncated or corrupt files, other formats (GIF,
// WebP, BMP, TIFF, ... are named when recognised), and sizes over kMaxImageSide or
// kMaxImagePixels, checked before any pixel memory is allocated. A truncated JPEG is an error
// even though libjpeg can decode it with gray padding. An operating-system read failure is an
// IoError.
//
// `write_png` writes to a temporary file in the target directory and renames it over the
// target, so the target is either the complete new file or left as it was.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "io/image.h"

namespace ethereal {

// Largest accepted width or height, in pixels.
inline constexpr int kMaxImageSide = 30000;
// Largest accepted width * height. An RGBA image of this size takes 1 GB.
inline constexpr std::int64_t kMaxImagePixels = 250'000'000;

enum class ImageFormat { kPng, kJpeg };

const char* image_format_name(ImageFormat format);  // "PNG", "JPEG"

// One PNG text chunk. Key and value are UTF-8. Reading converts tEXt and zTXt chunks from
// Latin-1. Writing uses tEXt when every character of the value is in Latin-1 (as Pillow's
// PngInfo.add_text does) and an uncompressed iTXt chunk otherwise.
struct PngTextChunk {
  std::string key;
  std::string value;

  friend bool operator==(const PngTextChunk&, const PngTextChunk&) = default;
};

// A decoded file with the facts about it that callers may report.
struct ImageFile {
  Image image;  // upright: the EXIF orientation is already applied
  ImageFormat format = ImageFormat::kPng;
  int exif_orientation = 1;  // the value found in the file (1..8), 1 when absent or invalid
  int stored_width = 0;      // size as stored in the file, before the orientation
  int stored_height = 0;
  std::vector<PngTextChunk> text;  // PNG text chunks in file order; empty for JPEG
};

// Decodes a PNG or JPEG file (see the notes at the top of this header).
ImageFile read_image_file(const std::filesystem::path& path);

// Decodes a PNG or JPEG file and returns only the upright image.
Image read_image(const std::filesystem::path& path);

// Returns the text chunks of a PNG file, decoding the whole file to reach chunks after the
// image data. Throws InvalidInputError for other formats.
std::vector<PngTextChunk> read_png_text(const std::filesystem::path& path);

// Writes an 8-bit gray, RGB or RGBA PNG with the given text chunks. Keys must be 1 to 79
// printable Latin-1 characters without leading, trailing or double spaces (the PNG rule), and
// values valid UTF-8; otherwise InvalidInputError. Failing to create, write or rename the file
// is an IoError, and then no temporary file remains and the target is untouched.
void write_png(const std::filesystem::path& path, const Image& image,
               const std::vector<PngTextChunk>& text = {});

}  // namespace ethereal
