// Writers of raw safetensors files shared by the safetensors tests, so tests can build malformed
// files byte by byte.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "support/files.h"

namespace ethereal::testing_util {

// Returns the 8-byte little-endian encoding of `value`.
inline std::string little_endian_u64(std::uint64_t value) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) {
    bytes[i] = static_cast<char>((value >> (8 * i)) & 0xFF);
  }
  return bytes;
}

// Writes a safetensors file from header text and `data_bytes` bytes of data (value 0x5A),
// with the header length set to the header's true size.
inline void write_raw_safetensors(const std::filesystem::path& path, std::string_view header,
                                  std::size_t data_bytes) {
  test_support::write_file(path, little_endian_u64(header.size()) + std::string(header) +
                                     std::string(data_bytes, '\x5A'));
}

}  // namespace ethereal::testing_util
