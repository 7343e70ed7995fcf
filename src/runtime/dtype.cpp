#include "runtime/dtype.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "runtime/error.h"

namespace ethereal {

namespace {

// A binary floating-point format of at most 16 bits, for the generic encoder and decoder.
struct SmallFloat {
  int exponent_bits;
  int mantissa_bits;
  int bias;
  bool has_infinity;         // IEEE style: all-ones exponent means infinity or NaN
  std::uint32_t nan;         // pattern written for NaN (without the sign)
  std::uint32_t max_finite;  // largest finite pattern (without the sign)
};

constexpr SmallFloat kF16{5, 10, 15, true, 0x7E00, 0x7BFF};
constexpr SmallFloat kE4M3{4, 3, 7, false, 0x7F, 0x7E};
constexpr SmallFloat kE5M2{5, 2, 15, true, 0x7E, 0x7B};

// Rounds `value` to the nearest representable value of `format`, ties to even. Overflow gives
// infinity for IEEE-style formats and saturates to the largest finite value otherwise.
std::uint32_t encode_small_float(float value, const SmallFloat& format) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const std::uint32_t sign = (bits >> 31) << (format.exponent_bits + format.mantissa_bits);
  const std::uint32_t abs_bits = bits & 0x7FFFFFFFu;
  const std::uint32_t infinity = ((1u << format.exponent_bits) - 1) << format.mantissa_bits;

  if (abs_bits > 0x7F800000u) {
    return sign | format.nan;
  }
  if (abs_bits == 0x7F800000u) {
    return sign | (format.has_infinity ? infinity : format.max_finite);
  }
  const int f32_exponent = static_cast<int>(abs_bits >> 23);
  if (f32_exponent == 0) {
    return sign;  // f32 subnormals are far below the smallest subnormal of every target
  }

  const int exponent = f32_exponent - 127;
  const int min_normal_exponent = 1 - format.bias;
  const std::uint32_t significand = (1u << 23) | (abs_bits & 0x7FFFFFu);
  int shift = 23 - format.mantissa_bits;
  if (exponent < min_normal_exponent) {
    shift += min_normal_exponent - exponent;
  }
  if (shift > 25) {
    return sign;  // below half of the smallest subnormal
  }

  std::uint32_t rounded = significand >> shift;
  const std::uint32_t remainder = significand & ((1u << shift) - 1);
  const std::uint32_t half = 1u << (shift - 1);
  if (remainder > half || (remainder == half && (rounded & 1u))) {
    ++rounded;
  }

  std::uint32_t result;
  if (exponent < min_normal_exponent) {
    result = rounded;  // subnormal; a carry into bit M makes it the smallest normal
  } else {
    // `rounded` carries the implicit bit at position M, so adding it to (biased - 1) << M
    // yields the biased exponent and lets a rounding carry bump the exponent.
    const int biased = exponent + format.bias;
    if (biased - 1 >= (1 << format.exponent_bits)) {
      result = format.has_infinity ? infinity : format.max_finite;
      return sign | result;
    }
    result = (static_cast<std::uint32_t>(biased - 1) << format.mantissa_bits) + rounded;
  }

  if (format.has_infinity) {
    if (result >= infinity) {
      result = infinity;
    }
  } else if (result > format.max_finite) {
    result = format.max_finite;
  }
  return sign | result;
}

float decode_small_float(std::uint32_t bits, const SmallFloat& format) {
  const int total = format.exponent_bits + format.mantissa_bits;
  const bool negative = (bits >> total) & 1u;
  const std::uint32_t exponent_field =
      (bits >> format.mantissa_bits) & ((1u << format.exponent_bits) - 1);
  const std::uint32_t mantissa = bits & ((1u << format.mantissa_bits) - 1);
  const std::uint32_t all_ones = (1u << format.exponent_bits) - 1;
  float magnitude;
  if (format.has_infinity && exponent_field == all_ones) {
    magnitude = mantissa == 0 ? std::numeric_limits<float>::infinity()
                              : std::numeric_limits<float>::quiet_NaN();
  } else if (!format.has_infinity && (bits & ((1u << total) - 1)) == format.nan) {
    magnitude = std::numeric_limits<float>::quiet_NaN();
  } else if (exponent_field == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), 1 - format.bias - format.mantissa_bits);
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa | (1u << format.mantissa_bits)),
                           static_cast<int>(exponent_field) - format.bias - format.mantissa_bits);
  }
  return negative ? -magnitude : magnitude;
}

std::array<float, 256> make_fp8_table(const SmallFloat& format) {
  std::array<float, 256> table{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    table[i] = decode_small_float(i, format);
  }
  return table;
}

const std::array<float, 256>& e4m3_table() {
  static const std::array<float, 256> table = make_fp8_table(kE4M3);
  return table;
}

const std::array<float, 256>& e5m2_table() {
  static const std::array<float, 256> table = make_fp8_table(kE5M2);
  return table;
}

template <typename Int>
Int saturate_round(float value) {
  if (std::isnan(value)) {
    return 0;
  }
  const double rounded = std::nearbyint(static_cast<double>(value));
  if (rounded <= static_cast<double>(std::numeric_limits<Int>::min())) {
    return std::numeric_limits<Int>::min();
  }
  if (rounded >= static_cast<double>(std::numeric_limits<Int>::max())) {
    return std::numeric_limits<Int>::max();
  }
  return static_cast<Int>(rounded);
}

float load_as_f32(const void* source, DType dtype, std::size_t i) {
  switch (dtype) {
    case DType::f32: return static_cast<const float*>(source)[i];
    case DType::bf16: return bf16_to_f32(static_cast<const std::uint16_t*>(source)[i]);
    case DType::f16: return f16_to_f32(static_cast<const std::uint16_t*>(source)[i]);
    case DType::fp8_e4m3: return e4m3_table()[static_cast<const std::uint8_t*>(source)[i]];
    case DType::fp8_e5m2: return e5m2_table()[static_cast<const std::uint8_t*>(source)[i]];
    case DType::int8: return static_cast<const std::int8_t*>(source)[i];
    case DType::uint8: return static_cast<const std::uint8_t*>(source)[i];
    case DType::int32: return static_cast<float>(static_cast<const std::int32_t*>(source)[i]);
    case DType::int64: return static_cast<float>(static_cast<const std::int64_t*>(source)[i]);
    case DType::packed4: break;
  }
  throw Error("convert_elements: packed4 elements have no scalar value");
}

void store_from_f32(float value, void* destination, DType dtype, std::size_t i) {
  switch (dtype) {
    case DType::f32: static_cast<float*>(destination)[i] = value; return;
    case DType::bf16: static_cast<std::uint16_t*>(destination)[i] = f32_to_bf16(value); return;
    case DType::f16: static_cast<std::uint16_t*>(destination)[i] = f32_to_f16(value); return;
    case DType::fp8_e4m3:
      static_cast<std::uint8_t*>(destination)[i] = f32_to_fp8_e4m3(value);
      return;
    case DType::fp8_e5m2:
      static_cast<std::uint8_t*>(destination)[i] = f32_to_fp8_e5m2(value);
      return;
    case DType::int8:
      static_cast<std::int8_t*>(destination)[i] = saturate_round<std::int8_t>(value);
      return;
    case DType::uint8:
      static_cast<std::uint8_t*>(destination)[i] = saturate_round<std::uint8_t>(value);
      return;
    case DType::int32:
      static_cast<std::int32_t*>(destination)[i] = saturate_round<std::int32_t>(value);
      return;
    case DType::int64:
      static_cast<std::int64_t*>(destination)[i] = saturate_round<std::int64_t>(value);
      return;
    case DType::packed4: break;
  }
  throw Error("convert_elements: packed4 elements have no scalar value");
}

// Integer-to-integer conversions go through int64 so that no value loses precision.
std::int64_t load_integer(const void* source, DType dtype, std::size_t i) {
  switch (dtype) {
    case DType::int8: return static_cast<const std::int8_t*>(source)[i];
    case DType::uint8: return static_cast<const std::uint8_t*>(source)[i];
    case DType::int32: return static_cast<const std::int32_t*>(source)[i];
    case DType::int64: return static_cast<const std::int64_t*>(source)[i];
    default: break;
  }
  throw Error("convert_elements: not an integer dtype");
}

template <typename Int>
Int saturate_integer(std::int64_t value) {
  return static_cast<Int>(std::clamp<std::int64_t>(value, std::numeric_limits<Int>::min(),
                                                   std::numeric_limits<Int>::max()));
}

void store_integer(std::int64_t value, void* destination, DType dtype, std::size_t i) {
  switch (dtype) {
    case DType::int8:
      static_cast<std::int8_t*>(destination)[i] = saturate_integer<std::int8_t>(value);
      return;
    case DType::uint8:
      static_cast<std::uint8_t*>(destination)[i] = saturate_integer<std::uint8_t>(value);
      return;
    case DType::int32:
      static_cast<std::int32_t*>(destination)[i] = saturate_integer<std::int32_t>(value);
      return;
    case DType::int64: static_cast<std::int64_t*>(destination)[i] = value; return;
    default: break;
  }
  throw Error("convert_elements: not an integer dtype");
}

}  // namespace

std::size_t dtype_bytes(DType dtype, std::size_t count) {
  return (count * static_cast<std::size_t>(dtype_bits(dtype)) + 7) / 8;
}

int dtype_bits(DType dtype) {
  switch (dtype) {
    case DType::f32:
    case DType::int32: return 32;
    case DType::bf16:
    case DType::f16: return 16;
    case DType::fp8_e4m3:
    case DType::fp8_e5m2:
    case DType::int8:
    case DType::uint8: return 8;
    case DType::int64: return 64;
    case DType::packed4: return 4;
  }
  return 0;
}

bool dtype_is_float(DType dtype) {
  switch (dtype) {
    case DType::f32:
    case DType::bf16:
    case DType::f16:
    case DType::fp8_e4m3:
    case DType::fp8_e5m2: return true;
    default: return false;
  }
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::fp8_e4m3: return "fp8_e4m3";
    case DType::fp8_e5m2: return "fp8_e5m2";
    case DType::int8: return "int8";
    case DType::uint8: return "uint8";
    case DType::int32: return "int32";
    case DType::int64: return "int64";
    case DType::packed4: return "packed4";
  }
  return "unknown";
}

DType parse_dtype(std::string_view name) {
  for (DType dtype : {DType::f32, DType::bf16, DType::f16, DType::fp8_e4m3, DType::fp8_e5m2,
                      DType::int8, DType::uint8, DType::int32, DType::int64, DType::packed4}) {
    if (dtype_name(dtype) == name) {
      return dtype;
    }
  }
  throw InvalidInputError("unknown dtype \"" + std::string(name) +
                          "\": expected one of f32, bf16, f16, fp8_e4m3, fp8_e5m2, int8, "
                          "uint8, int32, int64, packed4");
}

std::uint16_t f32_to_bf16(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
    return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);  // keep NaN quiet
  }
  const std::uint32_t rounding_bias = 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>((bits + rounding_bias) >> 16);
}

float bf16_to_f32(std::uint16_t bits) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

std::uint16_t f32_to_f16(float value) {
  return static_cast<std::uint16_t>(encode_small_float(value, kF16));
}

float f16_to_f32(std::uint16_t bits) {
  return decode_small_float(bits, kF16);
}

std::uint8_t f32_to_fp8_e4m3(float value) {
  return static_cast<std::uint8_t>(encode_small_float(value, kE4M3));
}

float fp8_e4m3_to_f32(std::uint8_t bits) {
  return e4m3_table()[bits];
}

std::uint8_t f32_to_fp8_e5m2(float value) {
  return static_cast<std::uint8_t>(encode_small_float(value, kE5M2));
}

float fp8_e5m2_to_f32(std::uint8_t bits) {
  return e5m2_table()[bits];
}

void convert_elements(const void* source, DType source_dtype, void* destination,
                      DType destination_dtype, std::size_t count) {
  if (source_dtype == DType::packed4 || destination_dtype == DType::packed4) {
    if (source_dtype != destination_dtype) {
      throw Error("convert_elements: packed4 converts only to itself");
    }
  }
  if (source_dtype == destination_dtype) {
    std::memcpy(destination, source, dtype_bytes(source_dtype, count));
    return;
  }
  if (source_dtype == DType::bf16 && destination_dtype == DType::f32) {
    const auto* in = static_cast<const std::uint16_t*>(source);
    auto* out = static_cast<float*>(destination);
    for (std::size_t i = 0; i < count; ++i) {
      out[i] = bf16_to_f32(in[i]);
    }
    return;
  }
  if (source_dtype == DType::f32 && destination_dtype == DType::bf16) {
    const auto* in = static_cast<const float*>(source);
    auto* out = static_cast<std::uint16_t*>(destination);
    for (std::size_t i = 0; i < count; ++i) {
      out[i] = f32_to_bf16(in[i]);
    }
    return;
  }
  if (!dtype_is_float(source_dtype) && !dtype_is_float(destination_dtype)) {
    for (std::size_t i = 0; i < count; ++i) {
      store_integer(load_integer(source, source_dtype, i), destination, destination_dtype, i);
    }
    return;
  }
  for (std::size_t i = 0; i < count; ++i) {
    store_from_f32(load_as_f32(source, source_dtype, i), destination, destination_dtype, i);
  }
}

}  // namespace ethereal
