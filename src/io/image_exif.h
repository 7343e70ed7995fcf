// EXIF orientation: reading the Orientation tag and turning an image upright.
//
// Cameras store pixels in sensor order and record how to display them in the EXIF tag
// Orientation (0x0112, in IFD0 of the TIFF structure that EXIF uses). The values 1..8 follow
// the TIFF 6.0 definition: 1 is upright, 2 to 4 are mirrors and a half turn, 5 to 8 swap
// width and height. `apply_exif_orientation` performs the same transposes as Pillow's
// `ImageOps.exif_transpose` (the diffusion pipelines call it when they load an image), so
// 6 turns the stored pixels 90 degrees clockwise and 8 turns them 90 degrees counter-clockwise.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "io/image.h"

namespace ethereal {

inline constexpr int kExifOrientationUpright = 1;

// Returns the Orientation value of IFD0 in `exif`, or std::nullopt when the tag is missing or
// the structure is malformed (every offset is bounds-checked, so any byte sequence is safe to
// pass). A tag that is not a single SHORT or LONG returns 0: present, but no valid orientation,
// so no transpose applies, as in Pillow. `exif` is the TIFF structure ("II*\0" or "MM\0*"
// header, either byte order), optionally preceded by the "Exif\0\0" identifier that a JPEG
// APP1 segment carries.
std::optional<int> parse_exif_orientation(std::span<const std::uint8_t> exif);

// Returns the digit after `tiff:Orientation="` or `tiff:Orientation>` in an XMP packet, or
// std::nullopt when absent. Pillow 9.4 searches for this pattern when EXIF has no Orientation
// tag.
std::optional<int> find_xmp_orientation(std::string_view xmp);

// Decodes the EXIF bytes of an ImageMagick "Raw profile type exif" PNG text chunk: the value
// is "\nexif\n<length>\n" followed by hex digits over several lines. As in Pillow, the first
// three lines are skipped and whitespace is ignored. Returns an empty vector when a
// non-hex character or an odd number of digits follows.
std::vector<std::uint8_t> decode_raw_exif_profile(std::string_view text);

// Returns `image` transposed so that it displays upright for the given orientation value.
// Values outside 2..8 return an unchanged copy.
Image apply_exif_orientation(const Image& image, int orientation);

}  // namespace ethereal
