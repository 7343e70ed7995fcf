// JPEG decoding with libjpeg (libjpeg-turbo's libjpeg 6.2 interface). See image_codecs.h for
// how errors leave libjpeg.
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

// jpeglib.h needs <cstdio> first.
#include <jerror.h>
#include <jpeglib.h>

#include <spdlog/spdlog.h>

#include "io/image_codecs.h"
#include "io/image_exif.h"
#include "runtime/error.h"

namespace ethereal::image_codecs {
namespace {

constexpr std::string_view kDamagedRemedy =
    "The file is damaged or incomplete; re-export or re-download the image";

// libjpeg's error manager extended with the jump target and what went wrong. `pub` must come
// first: libjpeg hands the callbacks a pointer to it.
struct JpegErrorManager {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  bool truncated;
  char message[JMSG_LENGTH_MAX];
  int warning_count;
  char first_warning[JMSG_LENGTH_MAX];
};

void on_jpeg_error(j_common_ptr cinfo) {
  auto* errors = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, errors->message);
  std::longjmp(errors->jump, 1);
}

// Handles warnings (level -1) and ignores trace messages (level >= 0). At the end of the data,
// libjpeg warns "Premature end of JPEG file" and pads the rest of the image with gray. That
// warning is fatal here, so truncated photos are rejected. Other warnings mean corrupt data
// that libjpeg recovered from: they are counted, and decode_jpeg logs them once per file.
void on_jpeg_message(j_common_ptr cinfo, int level) {
  if (level >= 0) {
    return;
  }
  auto* errors = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
    errors->truncated = true;
    (*cinfo->err->format_message)(cinfo, errors->message);
    std::longjmp(errors->jump, 1);
  }
  if (errors->warning_count == 0) {
    (*cinfo->err->format_message)(cinfo, errors->first_warning);
  }
  ++errors->warning_count;
  ++cinfo->err->num_warnings;
}

// Owns a decompressor. Destroying a zeroed or partly created decompressor is safe, so the
// destructor always runs jpeg_destroy_decompress.
class JpegDecompressor {
 public:
  JpegDecompressor() {
    cinfo_.err = jpeg_std_error(&errors_.pub);
    errors_.pub.error_exit = on_jpeg_error;
    errors_.pub.emit_message = on_jpeg_message;
  }
  ~JpegDecompressor() { jpeg_destroy_decompress(&cinfo_); }
  JpegDecompressor(const JpegDecompressor&) = delete;
  JpegDecompressor& operator=(const JpegDecompressor&) = delete;

  jpeg_decompress_struct* cinfo() { return &cinfo_; }
  JpegErrorManager* errors() { return &errors_; }

 private:
  jpeg_decompress_struct cinfo_{};
  JpegErrorManager errors_{};
};

// The functions below call setjmp and must have no local objects with destructors (see
// image_codecs.h). Each returns false after a libjpeg error, with the message in `errors`.

bool read_jpeg_header(jpeg_decompress_struct* cinfo, JpegErrorManager* errors, std::FILE* file) {
  if (setjmp(errors->jump)) {
    return false;
  }
  jpeg_create_decompress(cinfo);
  jpeg_stdio_src(cinfo, file);
  jpeg_save_markers(cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(cinfo, TRUE);
  return true;
}

bool set_jpeg_output(jpeg_decompress_struct* cinfo, JpegErrorManager* errors,
                     J_COLOR_SPACE color_space) {
  if (setjmp(errors->jump)) {
    return false;
  }
  cinfo->out_color_space = color_space;
  jpeg_calc_output_dimensions(cinfo);
  return true;
}

// Decodes every scanline into `pixels`, rows `row_size` bytes apart. The output size and
// component count were checked by the caller against the header, and libjpeg keeps them
// at scale 1.
bool read_jpeg_pixels(jpeg_decompress_struct* cinfo, JpegErrorManager* errors, std::uint8_t* pixels,
                      std::size_t row_size) {
  if (setjmp(errors->jump)) {
    return false;
  }
  jpeg_start_decompress(cinfo);
  while (cinfo->output_scanline < cinfo->output_height) {
    JSAMPROW row = pixels + static_cast<std::size_t>(cinfo->output_scanline) * row_size;
    jpeg_read_scanlines(cinfo, &row, 1);
  }
  jpeg_finish_decompress(cinfo);
  return true;
}

[[noreturn]] void throw_jpeg_error(const std::filesystem::path& path,
                                   const JpegErrorManager& errors) {
  if (errors.truncated) {
    throw_invalid_image(path, "the file is truncated: it ends before the JPEG data is complete",
                        kDamagedRemedy);
  }
  throw_invalid_image(path,
                      std::string("the JPEG data is invalid (libjpeg: ") + errors.message + ")",
                      kDamagedRemedy);
}

// Returns the orientation from the first APP1 segment that starts with "Exif\0", the
// segment Pillow reads.
int find_jpeg_orientation(const jpeg_decompress_struct& cinfo) {
  static constexpr char kExifPrefix[] = "Exif";  // with its terminating zero: 5 bytes
  for (jpeg_saved_marker_ptr marker = cinfo.marker_list; marker != nullptr; marker = marker->next) {
    const bool is_exif = marker->marker == JPEG_APP0 + 1 &&
                         marker->data_length >= sizeof(kExifPrefix) &&
                         std::memcmp(marker->data, kExifPrefix, sizeof(kExifPrefix)) == 0;
    if (!is_exif) {
      continue;
    }
    const std::optional<int> orientation =
        parse_exif_orientation(std::span<const std::uint8_t>(marker->data, marker->data_length));
    return orientation.value_or(kExifOrientationUpright);
  }
  return kExifOrientationUpright;
}

// Converts libjpeg's CMYK output to RGB in place of Pillow's "CMYK;I" unpacking followed by
// convert("RGB"). Pillow assumes Adobe's convention that CMYK JPEG samples are stored
// inverted, so ink = 255 - sample, and then computes R = (255 - K) - (C * (255 - K)) / 255
// with its rounded integer division. Substituting the stored samples gives the loop below.
Image cmyk_to_rgb(const Image& cmyk) {
  Image rgb(cmyk.width(), cmyk.height(), 3);
  const std::size_t pixel_count = static_cast<std::size_t>(cmyk.width()) * cmyk.height();
  const std::uint8_t* in = cmyk.pixels().data();
  std::uint8_t* out = rgb.pixels().data();
  for (std::size_t i = 0; i < pixel_count; ++i, in += 4, out += 3) {
    const int not_black = in[3];  // 255 - K
    for (int c = 0; c < 3; ++c) {
      const int ink = 255 - in[c];
      const int product = ink * not_black + 128;  // Pillow's rounded division by 255
      const int scaled = ((product >> 8) + product) >> 8;
      out[c] = static_cast<std::uint8_t>(not_black - scaled);
    }
  }
  return rgb;
}

}  // namespace

ImageFile decode_jpeg(std::FILE* file, const std::filesystem::path& path) {
  JpegDecompressor decompressor;
  jpeg_decompress_struct* cinfo = decompressor.cinfo();
  if (!read_jpeg_header(cinfo, decompressor.errors(), file)) {
    throw_jpeg_error(path, *decompressor.errors());
  }
  check_image_size(path, "JPEG", cinfo->image_width, cinfo->image_height);
  // Saved markers live in libjpeg's image pool, which jpeg_finish_decompress frees.
  const int orientation = find_jpeg_orientation(*cinfo);

  const bool is_cmyk = cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK;
  int channels = 3;
  J_COLOR_SPACE output_space = JCS_RGB;
  if (cinfo->jpeg_color_space == JCS_GRAYSCALE) {
    output_space = JCS_GRAYSCALE;
    channels = 1;
  } else if (is_cmyk) {
    output_space = JCS_CMYK;
    channels = 4;
  }
  if (!set_jpeg_output(cinfo, decompressor.errors(), output_space)) {
    throw_jpeg_error(path, *decompressor.errors());
  }
  if (cinfo->output_components != channels || cinfo->output_width != cinfo->image_width ||
      cinfo->output_height != cinfo->image_height) {
    throw_invalid_image(path,
                        "libjpeg cannot convert this JPEG's color space (" +
                            std::to_string(cinfo->jpeg_color_space) + ") to " +
                            std::to_string(channels) + " channels",
                        "Convert the image to RGB, for example by re-saving it as PNG");
  }

  // A CMYK image goes through a temporary with 4 channels, which the Image type calls RGBA.
  Image image(static_cast<int>(cinfo->image_width), static_cast<int>(cinfo->image_height),
              channels);
  if (!read_jpeg_pixels(cinfo, decompressor.errors(), image.pixels().data(), image.row_size())) {
    throw_jpeg_error(path, *decompressor.errors());
  }
  const JpegErrorManager& errors = *decompressor.errors();
  if (errors.warning_count > 0) {
    spdlog::warn(
        "JPEG file '{}' has corrupt data that libjpeg recovered from ({} warnings, "
        "first: {}); the image may show artifacts",
        path.string(), errors.warning_count, errors.first_warning);
  }

  ImageFile result;
  result.format = ImageFormat::kJpeg;
  result.stored_width = image.width();
  result.stored_height = image.height();
  result.exif_orientation = orientation >= 1 && orientation <= 8 ? orientation : 1;
  result.image = is_cmyk ? cmyk_to_rgb(image) : std::move(image);
  return result;
}

}  // namespace ethereal::image_codecs
