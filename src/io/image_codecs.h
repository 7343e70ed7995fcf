// Internal interface between image_file.cpp (opening files, format detection, orientation,
// temporary-file handling) and the libpng and libjpeg code in image_png.cpp and image_jpeg.cpp.
//
// Both C libraries report errors by calling a function that must not return. Their callbacks
// longjmp back into a small function that called setjmp and has no local C++ objects with
// destructors, so no destructor is skipped and no exception crosses a C frame. That function
// returns false, and the C++ caller throws. Library handles are RAII objects owned by the
// caller's frame, which longjmp never leaves, so they are destroyed on every path.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "io/image_file.h"

namespace ethereal::image_codecs {

// Throws InvalidInputError "failed to read image '<path>': <problem>. <remedy>".
[[noreturn]] void throw_invalid_image(const std::filesystem::path& path, std::string_view problem,
                                      std::string_view remedy);

// Throws InvalidInputError unless width and height are within kMaxImageSide and their product
// within kMaxImagePixels. `format` names the format in the message ("PNG").
void check_image_size(const std::filesystem::path& path, const char* format, std::uint64_t width,
                      std::uint64_t height);

// Decodes the PNG in `file`, read from its current position (the start). The returned image is
// as stored: the caller applies `exif_orientation`.
ImageFile decode_png(std::FILE* file, const std::filesystem::path& path);

// Decodes the JPEG in `file`, read from its current position (the start). The returned image
// is as stored: the caller applies `exif_orientation`.
ImageFile decode_jpeg(std::FILE* file, const std::filesystem::path& path);

// Writes `image` as an 8-bit PNG with `text` to `file`. `path` is the final target, used in
// messages. Throws IoError when libpng fails to write.
void encode_png(std::FILE* file, const std::filesystem::path& path, const Image& image,
                const std::vector<PngTextChunk>& text);

// Throws InvalidInputError unless chunk.key is a valid PNG keyword and chunk.value valid UTF-8.
void validate_png_text(const std::filesystem::path& path, const PngTextChunk& chunk);

}  // namespace ethereal::image_codecs
