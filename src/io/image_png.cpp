// PNG decoding and encoding with libpng 1.6. See image_codecs.h for how errors leave libpng.
#include <png.h>

#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <new>
#include <optional>
#include <string>
#include <utility>

#include <spdlog/spdlog.h>

#include "io/image_codecs.h"
#include "io/image_exif.h"
#include "io/image_text.h"
#include "runtime/error.h"

namespace ethereal::image_codecs {
namespace {

constexpr std::string_view kDamagedRemedy =
    "The file is damaged or incomplete; re-export or re-download the image";

// State shared with the libpng callbacks through the error and I/O pointers.
struct PngContext {
  std::FILE* file = nullptr;
  const char* path = "";
  bool hit_end_of_file = false;
  int io_errno = 0;  // errno of a failed fread or fwrite, 0 otherwise
  char message[256] = {};
};

void on_png_error(png_structp png, png_const_charp message) {
  auto* context = static_cast<PngContext*>(png_get_error_ptr(png));
  std::snprintf(context->message, sizeof(context->message), "%s", message);
  png_longjmp(png, 1);
}

// libpng warns about problems it recovers from (a bad CRC in an ancillary chunk, an unusual
// color profile). Pillow ignores them, and so does decoding; they are kept in the debug log.
void on_png_warning(png_structp png, png_const_charp message) {
  const auto* context = static_cast<const PngContext*>(png_get_error_ptr(png));
  spdlog::debug("libpng warning for '{}': {}", context->path, message);
}

void read_png_bytes(png_structp png, png_bytep data, std::size_t length) {
  auto* context = static_cast<PngContext*>(png_get_io_ptr(png));
  if (std::fread(data, 1, length, context->file) == length) {
    return;
  }
  if (std::ferror(context->file)) {
    context->io_errno = errno;
    png_error(png, "read error");
  }
  context->hit_end_of_file = true;
  png_error(png, "unexpected end of file");
}

class PngReadHandle {
 public:
  explicit PngReadHandle(PngContext* context) {
    png_ = png_create_read_struct(PNG_LIBPNG_VER_STRING, context, on_png_error, on_png_warning);
    if (png_ != nullptr) {
      info_ = png_create_info_struct(png_);
      end_info_ = png_create_info_struct(png_);
    }
    if (png_ == nullptr || info_ == nullptr || end_info_ == nullptr) {
      png_destroy_read_struct(&png_, &info_, &end_info_);
      throw std::bad_alloc();
    }
    png_set_read_fn(png_, context, read_png_bytes);
  }
  ~PngReadHandle() { png_destroy_read_struct(&png_, &info_, &end_info_); }
  PngReadHandle(const PngReadHandle&) = delete;
  PngReadHandle& operator=(const PngReadHandle&) = delete;

  png_structp png() const { return png_; }
  png_infop info() const { return info_; }
  png_infop end_info() const { return end_info_; }

 private:
  png_structp png_ = nullptr;
  png_infop info_ = nullptr;
  png_infop end_info_ = nullptr;
};

struct PngHeader {
  png_uint_32 width = 0;
  png_uint_32 height = 0;
  int bit_depth = 0;
  int color_type = 0;
};

// The functions below call setjmp and must have no local objects with destructors (see
// image_codecs.h). Each returns false after a libpng error, with the message in the context.

bool read_png_header(png_structp png, png_infop info, PngHeader* header) {
  if (setjmp(png_jmpbuf(png))) {
    return false;
  }
  png_read_info(png, info);
  png_get_IHDR(png, info, &header->width, &header->height, &header->bit_depth, &header->color_type,
               nullptr, nullptr, nullptr);
  return true;
}

// Requests 8-bit gray, RGB or RGBA output and returns its channel count.
bool configure_png_output(png_structp png, png_infop info, const PngHeader& header, int* channels) {
  if (setjmp(png_jmpbuf(png))) {
    return false;
  }
  const bool has_trns = png_get_valid(png, info, PNG_INFO_tRNS) != 0;
  if (header.color_type == PNG_COLOR_TYPE_PALETTE) {
    png_set_palette_to_rgb(png);
  }
  if (header.color_type == PNG_COLOR_TYPE_GRAY && header.bit_depth < 8) {
    png_set_expand_gray_1_2_4_to_8(png);
  }
  if (has_trns) {
    png_set_tRNS_to_alpha(png);
  }
  if (header.bit_depth == 16) {
    png_set_strip_16(png);  // keeps the high byte: v >> 8
  }
  const bool gray_gains_alpha = header.color_type == PNG_COLOR_TYPE_GRAY && has_trns;
  if (header.color_type == PNG_COLOR_TYPE_GRAY_ALPHA || gray_gains_alpha) {
    png_set_gray_to_rgb(png);  // the Image type has no gray-alpha layout
  }
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  *channels = png_get_channels(png, info);
  return true;
}

bool read_png_rows(png_structp png, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) {
    return false;
  }
  png_read_image(png, rows);
  return true;
}

bool read_png_end(png_structp png, png_infop end_info) {
  if (setjmp(png_jmpbuf(png))) {
    return false;
  }
  png_read_end(png, end_info);
  return true;
}

[[noreturn]] void throw_png_error(const std::filesystem::path& path, const PngContext& context) {
  if (context.io_errno != 0) {
    throw IoError("failed to read image '" + path.string() +
                  "': " + std::strerror(context.io_errno) +
                  ". Check that the disk or network file system is available");
  }
  if (context.hit_end_of_file) {
    throw_invalid_image(path, "the file is truncated: it ends before the PNG data is complete",
                        kDamagedRemedy);
  }
  throw_invalid_image(path,
                      std::string("the PNG data is invalid (libpng: ") + context.message + ")",
                      kDamagedRemedy);
}

void append_text_chunks(png_structp png, png_infop info, std::vector<PngTextChunk>* out) {
  png_textp chunks = nullptr;
  int count = 0;
  png_get_text(png, info, &chunks, &count);
  for (int i = 0; i < count; ++i) {
    const png_text& chunk = chunks[i];
    const bool is_itxt = chunk.compression == PNG_ITXT_COMPRESSION_NONE ||
                         chunk.compression == PNG_ITXT_COMPRESSION_zTXt;
    const std::size_t length = is_itxt ? chunk.itxt_length : chunk.text_length;
    std::string value = chunk.text != nullptr ? std::string(chunk.text, length) : std::string();
    out->push_back({latin1_to_utf8(chunk.key), is_itxt ? std::move(value) : latin1_to_utf8(value)});
  }
}

std::optional<std::vector<std::uint8_t>> find_exif_chunk(png_structp png, png_infop info) {
  png_bytep exif = nullptr;
  png_uint_32 size = 0;
  if (png_get_eXIf_1(png, info, &size, &exif) == 0 || exif == nullptr) {
    return std::nullopt;
  }
  return std::vector<std::uint8_t>(exif, exif + size);
}

// Finds the EXIF orientation the way Pillow 9.4 does for PNG: the eXIf chunk, else a
// "Raw profile type exif" text chunk (ImageMagick's hex form), and only when neither has the
// tag, tiff:Orientation in the XMP packet.
int find_png_orientation(const std::optional<std::vector<std::uint8_t>>& exif_chunk,
                         const std::vector<PngTextChunk>& text) {
  std::optional<int> orientation;
  if (exif_chunk) {
    orientation = parse_exif_orientation(*exif_chunk);
  } else {
    for (const PngTextChunk& chunk : text) {
      if (chunk.key == "Raw profile type exif") {
        orientation = parse_exif_orientation(decode_raw_exif_profile(chunk.value));
        break;
      }
    }
  }
  if (!orientation) {
    for (const PngTextChunk& chunk : text) {
      if (chunk.key == "XML:com.adobe.xmp") {
        orientation = find_xmp_orientation(chunk.value);
        break;
      }
    }
  }
  return orientation.value_or(kExifOrientationUpright);
}

class PngWriteHandle {
 public:
  explicit PngWriteHandle(PngContext* context) {
    png_ = png_create_write_struct(PNG_LIBPNG_VER_STRING, context, on_png_error, on_png_warning);
    if (png_ != nullptr) {
      info_ = png_create_info_struct(png_);
    }
    if (png_ == nullptr || info_ == nullptr) {
      png_destroy_write_struct(&png_, &info_);
      throw std::bad_alloc();
    }
    png_set_write_fn(png_, context, write_png_bytes, flush_png_bytes);
  }
  ~PngWriteHandle() { png_destroy_write_struct(&png_, &info_); }
  PngWriteHandle(const PngWriteHandle&) = delete;
  PngWriteHandle& operator=(const PngWriteHandle&) = delete;

  png_structp png() const { return png_; }
  png_infop info() const { return info_; }

 private:
  static void write_png_bytes(png_structp png, png_bytep data, std::size_t length) {
    auto* context = static_cast<PngContext*>(png_get_io_ptr(png));
    if (std::fwrite(data, 1, length, context->file) != length) {
      context->io_errno = errno;
      png_error(png, "write error");
    }
  }
  static void flush_png_bytes(png_structp png) {
    auto* context = static_cast<PngContext*>(png_get_io_ptr(png));
    std::fflush(context->file);
  }

  png_structp png_ = nullptr;
  png_infop info_ = nullptr;
};

// Text chunks converted for libpng, which keeps pointers into `strings` until png_set_text
// has copied them.
struct PngTextForLibpng {
  std::vector<std::string> strings;
  std::vector<png_text> chunks;
};

PngTextForLibpng prepare_text_chunks(const std::vector<PngTextChunk>& text) {
  PngTextForLibpng prepared;
  prepared.strings.reserve(text.size() * 2);  // no reallocation: chunks point into it
  for (const PngTextChunk& chunk : text) {
    const std::string& key = prepared.strings.emplace_back(*utf8_to_latin1(chunk.key));
    std::optional<std::string> latin1_value = utf8_to_latin1(chunk.value);
    const bool use_itxt = !latin1_value.has_value();
    const std::string& value =
        prepared.strings.emplace_back(use_itxt ? chunk.value : std::move(*latin1_value));

    png_text entry{};
    entry.compression = use_itxt ? PNG_ITXT_COMPRESSION_NONE : PNG_TEXT_COMPRESSION_NONE;
    entry.key = const_cast<char*>(key.c_str());
    entry.text = const_cast<char*>(value.c_str());
    entry.text_length = use_itxt ? 0 : value.size();
    entry.itxt_length = use_itxt ? value.size() : 0;
    entry.lang = nullptr;
    entry.lang_key = nullptr;
    prepared.chunks.push_back(entry);
  }
  return prepared;
}

struct PngWriteRequest {
  png_uint_32 width = 0;
  png_uint_32 height = 0;
  int color_type = 0;
  png_bytepp rows = nullptr;
  png_textp text = nullptr;
  int text_count = 0;
};

// Calls setjmp, so it must have no local objects with destructors (see image_codecs.h).
bool write_png_stream(png_structp png, png_infop info, const PngWriteRequest& request) {
  if (setjmp(png_jmpbuf(png))) {
    return false;
  }
  png_set_IHDR(png, info, request.width, request.height, 8, request.color_type, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (request.text_count > 0) {
    png_set_text(png, info, request.text, request.text_count);
  }
  png_write_info(png, info);
  png_write_image(png, request.rows);
  png_write_end(png, info);
  return true;
}

int png_color_type(int channels) {
  switch (channels) {
    case 1: return PNG_COLOR_TYPE_GRAY;
    case 3: return PNG_COLOR_TYPE_RGB;
    default: return PNG_COLOR_TYPE_RGB_ALPHA;
  }
}

// Returns why `key` is not a valid PNG keyword, or an empty string when it is valid.
std::string png_keyword_problem(const std::string& key) {
  const std::optional<std::string> latin1 = utf8_to_latin1(key);
  if (!latin1) {
    return "it contains a character outside Latin-1 (or invalid UTF-8)";
  }
  if (latin1->empty() || latin1->size() > 79) {
    return "it has " + std::to_string(latin1->size()) + " characters, expected 1 to 79";
  }
  for (const char c : *latin1) {
    const auto code = static_cast<std::uint8_t>(c);
    const bool printable = (code >= 32 && code <= 126) || code >= 161;
    if (!printable) {
      return "it contains the non-printable character code " + std::to_string(code);
    }
  }
  if (latin1->front() == ' ' || latin1->back() == ' ' || latin1->find("  ") != std::string::npos) {
    return "it has a leading, trailing or double space";
  }
  return {};
}
}  // namespace

ImageFile decode_png(std::FILE* file, const std::filesystem::path& path) {
  const std::string path_string = path.string();
  PngContext context;
  context.file = file;
  context.path = path_string.c_str();
  PngReadHandle handle(&context);

  PngHeader header;
  if (!read_png_header(handle.png(), handle.info(), &header)) {
    throw_png_error(path, context);
  }
  check_image_size(path, "PNG", header.width, header.height);

  int channels = 0;
  if (!configure_png_output(handle.png(), handle.info(), header, &channels)) {
    throw_png_error(path, context);
  }
  Image image(static_cast<int>(header.width), static_cast<int>(header.height), channels);
  std::vector<png_bytep> rows(header.height);
  for (png_uint_32 y = 0; y < header.height; ++y) {
    rows[y] = image.row(static_cast<int>(y));
  }
  if (!read_png_rows(handle.png(), rows.data())) {
    throw_png_error(path, context);
  }

  // Pillow accepts a file whose pixel data is complete even if the chunks after it are
  // damaged or missing, so a failure here only drops those chunks.
  const bool end_ok = read_png_end(handle.png(), handle.end_info());
  if (!end_ok) {
    spdlog::warn("ignoring the damaged end of PNG file '{}' after complete image data: {}",
                 path_string, context.message);
  }

  ImageFile result;
  result.format = ImageFormat::kPng;
  result.stored_width = image.width();
  result.stored_height = image.height();
  append_text_chunks(handle.png(), handle.info(), &result.text);
  std::optional<std::vector<std::uint8_t>> exif_chunk =
      find_exif_chunk(handle.png(), handle.info());
  if (end_ok) {
    append_text_chunks(handle.png(), handle.end_info(), &result.text);
    if (!exif_chunk) {
      exif_chunk = find_exif_chunk(handle.png(), handle.end_info());
    }
  }
  const int orientation = find_png_orientation(exif_chunk, result.text);
  result.exif_orientation = orientation >= 1 && orientation <= 8 ? orientation : 1;
  result.image = std::move(image);
  return result;
}

}  // namespace ethereal::image_codecs

namespace ethereal::image_codecs {

void validate_png_text(const std::filesystem::path& path, const PngTextChunk& chunk) {
  const std::string problem = png_keyword_problem(chunk.key);
  if (!problem.empty()) {
    throw InvalidInputError("failed to write image '" + path.string() +
                            "': invalid PNG text key '" + chunk.key + "': " + problem +
                            ". Use 1 to 79 printable Latin-1 characters, single spaces inside");
  }
  if (!is_valid_utf8(chunk.value)) {
    throw InvalidInputError("failed to write image '" + path.string() +
                            "': the value of PNG text key '" + chunk.key +
                            "' is not valid UTF-8. Pass UTF-8 text");
  }
}

void encode_png(std::FILE* file, const std::filesystem::path& path, const Image& image,
                const std::vector<PngTextChunk>& text) {
  const std::string path_string = path.string();
  PngContext context;
  context.file = file;
  context.path = path_string.c_str();
  PngWriteHandle handle(&context);

  std::vector<png_bytep> rows(static_cast<std::size_t>(image.height()));
  for (int y = 0; y < image.height(); ++y) {
    rows[y] = const_cast<png_bytep>(image.row(y));  // libpng only reads the rows
  }
  PngTextForLibpng prepared = prepare_text_chunks(text);

  PngWriteRequest request;
  request.width = static_cast<png_uint_32>(image.width());
  request.height = static_cast<png_uint_32>(image.height());
  request.color_type = png_color_type(image.channels());
  request.rows = rows.data();
  request.text = prepared.chunks.data();
  request.text_count = static_cast<int>(prepared.chunks.size());
  if (write_png_stream(handle.png(), handle.info(), request)) {
    return;
  }
  const std::string reason =
      context.io_errno != 0 ? std::strerror(context.io_errno) : context.message;
  throw IoError("failed to write image '" + path_string + "': " + reason +
                ". Check free disk space and that the directory is writable");
}

}  // namespace ethereal::image_codecs
