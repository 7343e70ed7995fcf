#include "io/image_exif.h"

#include <cstddef>
#include <cstring>

namespace ethereal {
namespace {

constexpr std::uint16_t kOrientationTag = 0x0112;
constexpr std::uint16_t kTiffTypeShort = 3;
constexpr std::uint16_t kTiffTypeLong = 4;
constexpr std::size_t kTiffHeaderSize = 8;
constexpr std::size_t kIfdEntrySize = 12;

// Reads unsigned integers of the byte order named in the TIFF header. Callers check bounds.
class TiffReader {
 public:
  TiffReader(std::span<const std::uint8_t> bytes, bool big_endian)
      : bytes_(bytes), big_endian_(big_endian) {}

  bool contains(std::size_t offset, std::size_t size) const {
    return offset <= bytes_.size() && size <= bytes_.size() - offset;
  }

  std::uint16_t u16(std::size_t offset) const {
    const std::uint8_t* p = bytes_.data() + offset;
    return big_endian_ ? static_cast<std::uint16_t>(p[0] << 8 | p[1])
                       : static_cast<std::uint16_t>(p[1] << 8 | p[0]);
  }

  std::uint32_t u32(std::size_t offset) const {
    const std::uint8_t* p = bytes_.data() + offset;
    if (big_endian_) {
      return std::uint32_t{p[0]} << 24 | std::uint32_t{p[1]} << 16 | std::uint32_t{p[2]} << 8 |
             p[3];
    }
    return std::uint32_t{p[3]} << 24 | std::uint32_t{p[2]} << 16 | std::uint32_t{p[1]} << 8 | p[0];
  }

 private:
  std::span<const std::uint8_t> bytes_;
  bool big_endian_;
};

// Source pixel of output (0, 0) and the source steps, in pixels, for one step along output x
// and along output y. Output (x, y) reads source pixel origin + x * step_x + y * step_y.
struct TransposeWalk {
  std::ptrdiff_t origin;
  std::ptrdiff_t step_x;
  std::ptrdiff_t step_y;
};

TransposeWalk transpose_walk(int orientation, std::ptrdiff_t width, std::ptrdiff_t height) {
  const std::ptrdiff_t last_x = width - 1;
  const std::ptrdiff_t last_y = height - 1;
  switch (orientation) {
    case 2:  // mirror left-right: out(x, y) = in(W-1-x, y)
      return {last_x, -1, width};
    case 3:  // half turn: out(x, y) = in(W-1-x, H-1-y)
      return {last_y * width + last_x, -1, -width};
    case 4:  // mirror top-bottom: out(x, y) = in(x, H-1-y)
      return {last_y * width, 1, -width};
    case 5:  // transpose: out(x, y) = in(y, x)
      return {0, width, 1};
    case 6:  // quarter turn clockwise: out(x, y) = in(y, H-1-x)
      return {last_y * width, -width, 1};
    case 7:  // transverse: out(x, y) = in(W-1-y, H-1-x)
      return {last_y * width + last_x, -width, -1};
    case 8:  // quarter turn counter-clockwise: out(x, y) = in(W-1-y, x)
      return {last_x, width, -1};
    default: return {0, 1, width};
  }
}

}  // namespace

std::optional<int> parse_exif_orientation(std::span<const std::uint8_t> exif) {
  static constexpr std::uint8_t kExifIdentifier[6] = {'E', 'x', 'i', 'f', 0, 0};
  if (exif.size() >= sizeof(kExifIdentifier) &&
      std::memcmp(exif.data(), kExifIdentifier, sizeof(kExifIdentifier)) == 0) {
    exif = exif.subspan(sizeof(kExifIdentifier));
  }
  if (exif.size() < kTiffHeaderSize) {
    return std::nullopt;
  }

  bool big_endian = false;
  if (exif[0] == 'M' && exif[1] == 'M') {
    big_endian = true;
  } else if (!(exif[0] == 'I' && exif[1] == 'I')) {
    return std::nullopt;
  }
  const TiffReader tiff(exif, big_endian);
  if (tiff.u16(2) != 42) {
    return std::nullopt;
  }

  const std::size_t ifd_offset = tiff.u32(4);
  if (!tiff.contains(ifd_offset, 2)) {
    return std::nullopt;
  }
  const std::size_t entry_count = tiff.u16(ifd_offset);
  for (std::size_t i = 0; i < entry_count; ++i) {
    const std::size_t entry = ifd_offset + 2 + i * kIfdEntrySize;
    if (!tiff.contains(entry, kIfdEntrySize)) {
      break;
    }
    if (tiff.u16(entry) != kOrientationTag) {
      continue;
    }
    const std::uint16_t type = tiff.u16(entry + 2);
    if (tiff.u32(entry + 4) != 1) {
      return 0;
    }
    // A single value of up to 4 bytes is stored in the entry itself, left-justified.
    std::uint32_t value = 0;
    if (type == kTiffTypeShort) {
      value = tiff.u16(entry + 8);
    } else if (type == kTiffTypeLong) {
      value = tiff.u32(entry + 8);
    }
    return value <= 8 ? static_cast<int>(value) : 0;
  }
  return std::nullopt;
}

std::optional<int> find_xmp_orientation(std::string_view xmp) {
  static constexpr std::string_view kName = "tiff:Orientation";
  for (std::size_t at = xmp.find(kName); at != std::string_view::npos;
       at = xmp.find(kName, at + 1)) {
    std::string_view rest = xmp.substr(at + kName.size());
    if (rest.starts_with("=\"")) {
      rest.remove_prefix(2);
    } else if (rest.starts_with(">")) {
      rest.remove_prefix(1);
    } else {
      continue;
    }
    if (!rest.empty() && rest[0] >= '0' && rest[0] <= '9') {
      return rest[0] - '0';
    }
  }
  return std::nullopt;
}

std::vector<std::uint8_t> decode_raw_exif_profile(std::string_view text) {
  for (int line = 0; line < 3; ++line) {
    const std::size_t newline = text.find('\n');
    if (newline == std::string_view::npos) {
      return {};
    }
    text.remove_prefix(newline + 1);
  }
  std::vector<std::uint8_t> bytes;
  int high_nibble = -1;
  for (const char c : text) {
    int nibble = -1;
    if (c >= '0' && c <= '9') {
      nibble = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      nibble = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      nibble = c - 'A' + 10;
    } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      continue;
    } else {
      return {};
    }
    if (high_nibble < 0) {
      high_nibble = nibble;
    } else {
      bytes.push_back(static_cast<std::uint8_t>(high_nibble << 4 | nibble));
      high_nibble = -1;
    }
  }
  return high_nibble < 0 ? bytes : std::vector<std::uint8_t>{};
}

Image apply_exif_orientation(const Image& image, int orientation) {
  if (image.empty() || orientation < 2 || orientation > 8) {
    return image;
  }
  const bool swaps_axes = orientation >= 5;
  const int out_width = swaps_axes ? image.height() : image.width();
  const int out_height = swaps_axes ? image.width() : image.height();
  const int channels = image.channels();
  const TransposeWalk walk = transpose_walk(orientation, image.width(), image.height());

  Image out(out_width, out_height, channels);
  const std::uint8_t* in = image.pixels().data();
  for (int y = 0; y < out_height; ++y) {
    std::uint8_t* out_row = out.row(y);
    std::ptrdiff_t source = walk.origin + y * walk.step_y;
    for (int x = 0; x < out_width; ++x, source += walk.step_x) {
      std::memcpy(out_row + static_cast<std::ptrdiff_t>(x) * channels, in + source * channels,
                  static_cast<std::size_t>(channels));
    }
  }
  return out;
}

}  // namespace ethereal
