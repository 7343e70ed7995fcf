// Sizes in bytes as users write them on the command line and in messages.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace ethereal::memory {

// Parses a SIZE argument: a plain number of bytes ("1048576"), or a number with a unit. Binary
// units: KiB, MiB, GiB, TiB and their short forms K, M, G, T (all powers of 1024). Decimal
// units: KB, MB, GB, TB (powers of 1000). "B" means bytes. Units are case-insensitive, spaces
// may separate the number from the unit, and a number with a unit may have a fraction
// ("1.5GiB"), rounded down to whole bytes.
//
// Throws InvalidInputError naming the text for an empty text, a sign, an unknown unit, a
// fraction without a unit, or a value above 2^64 - 1 bytes.
std::uint64_t parse_size(std::string_view text);

// "512 B" below 1 KiB; otherwise two decimals in the largest binary unit that keeps the number
// at least 1: "1.50 GiB", "812.40 MiB".
std::string format_size(std::uint64_t bytes);

}  // namespace ethereal::memory
