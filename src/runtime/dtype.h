// Element types and scalar conversions between them.
//
// Conversions from f32 round to nearest, ties to even. fp8_e4m3 is the "fn" variant
// (no infinities, one NaN pattern per sign, max finite 448): out-of-range values saturate
// to +-448. fp8_e5m2 follows IEEE conventions and overflows to infinity.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ethereal {

enum class DType : std::uint8_t {
  f32,
  bf16,
  f16,
  fp8_e4m3,
  fp8_e5m2,
  int8,
  uint8,
  int32,
  int64,
  // Two 4-bit codes per byte, low nibble first; the meaning of a code is set by the
  // quantisation format that uses it.
  packed4,
};

// Size in bytes of `count` elements; for packed4 an odd count rounds up to whole bytes.
std::size_t dtype_bytes(DType dtype, std::size_t count);
// Size of one element in bits (4 for packed4).
int dtype_bits(DType dtype);
bool dtype_is_float(DType dtype);
// Lower-case name used in logs and configuration: "f32", "bf16", "fp8_e4m3", ...
std::string_view dtype_name(DType dtype);
// Parses a name from dtype_name; throws InvalidInputError naming the value otherwise.
DType parse_dtype(std::string_view name);

// Scalar conversions. The 16- and 8-bit types are carried as their raw bit patterns.
std::uint16_t f32_to_bf16(float value);
float bf16_to_f32(std::uint16_t bits);
std::uint16_t f32_to_f16(float value);
float f16_to_f32(std::uint16_t bits);
std::uint8_t f32_to_fp8_e4m3(float value);
float fp8_e4m3_to_f32(std::uint8_t bits);
std::uint8_t f32_to_fp8_e5m2(float value);
float fp8_e5m2_to_f32(std::uint8_t bits);

// Converts `count` elements between any two of f32, bf16, f16, fp8_e4m3, fp8_e5m2, int8,
// uint8, int32, int64 (integers convert through f32 with rounding and saturation).
// Runs on the calling thread; callers parallelise over chunks.
void convert_elements(const void* source, DType source_dtype, void* destination,
                      DType destination_dtype, std::size_t count);

}  // namespace ethereal
