#include "memory/size.h"

#include <array>
#include <cctype>
#include <limits>
#include <optional>

#include <fmt/format.h>

#include "runtime/error.h"

namespace ethereal::memory {
namespace {

constexpr std::uint64_t kMaxBytes = std::numeric_limits<std::uint64_t>::max();

struct SizeUnit {
  std::string_view name;  // lower case
  std::uint64_t multiplier;
};

constexpr std::uint64_t kKiB = 1024;
constexpr std::uint64_t kKB = 1000;

constexpr std::array<SizeUnit, 13> kUnits = {{
    {"b", 1},
    {"k", kKiB},
    {"kib", kKiB},
    {"m", kKiB* kKiB},
    {"mib", kKiB* kKiB},
    {"g", kKiB* kKiB* kKiB},
    {"gib", kKiB* kKiB* kKiB},
    {"t", kKiB* kKiB* kKiB* kKiB},
    {"tib", kKiB* kKiB* kKiB* kKiB},
    {"kb", kKB},
    {"mb", kKB* kKB},
    {"gb", kKB* kKB* kKB},
    {"tb", kKB* kKB* kKB* kKB},
}};

InvalidInputError invalid_size(std::string_view text, std::string_view problem) {
  return InvalidInputError(fmt::format(
      "invalid size '{}': {}; write a number of bytes or a number with a unit (KiB, MiB, GiB, "
      "TiB or K, M, G, T for powers of 1024; KB, MB, GB, TB for powers of 1000), for example "
      "512MiB or 8GiB",
      text, problem));
}

std::optional<std::uint64_t> find_multiplier(std::string_view unit) {
  std::string lower;
  for (const char c : unit) {
    lower.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  for (const SizeUnit& candidate : kUnits) {
    if (candidate.name == lower) {
      return candidate.multiplier;
    }
  }
  return std::nullopt;
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

}  // namespace

std::uint64_t parse_size(std::string_view text) {
  if (text.empty()) {
    throw invalid_size(text, "the text is empty");
  }
  if (text.front() == '-' || text.front() == '+') {
    throw invalid_size(text, "a size has no sign");
  }

  // Integer digits, then optional fraction digits.
  std::size_t position = 0;
  std::string_view integer_digits;
  while (position < text.size() && is_digit(text[position])) {
    ++position;
  }
  integer_digits = text.substr(0, position);
  std::string_view fraction_digits;
  if (position < text.size() && text[position] == '.') {
    const std::size_t fraction_begin = ++position;
    while (position < text.size() && is_digit(text[position])) {
      ++position;
    }
    fraction_digits = text.substr(fraction_begin, position - fraction_begin);
    if (fraction_digits.empty()) {
      throw invalid_size(text, "a decimal point must be followed by digits");
    }
  }
  if (integer_digits.empty()) {
    throw invalid_size(text, "it does not start with a number");
  }

  while (position < text.size() && text[position] == ' ') {
    ++position;
  }
  const std::string_view unit = text.substr(position);
  std::uint64_t multiplier = 1;
  if (!unit.empty()) {
    const std::optional<std::uint64_t> found = find_multiplier(unit);
    if (!found) {
      throw invalid_size(text, fmt::format("unknown unit '{}'", unit));
    }
    multiplier = *found;
  } else if (!fraction_digits.empty()) {
    throw invalid_size(text, "a number of bytes must be whole");
  }

  std::uint64_t integer = 0;
  for (const char digit : integer_digits) {
    const std::uint64_t value = static_cast<std::uint64_t>(digit - '0');
    if (integer > (kMaxBytes - value) / 10) {
      throw invalid_size(text, "the value exceeds 2^64 - 1 bytes");
    }
    integer = integer * 10 + value;
  }
  if (integer > kMaxBytes / multiplier) {
    throw invalid_size(text, "the value exceeds 2^64 - 1 bytes");
  }
  std::uint64_t bytes = integer * multiplier;

  // The fraction contributes floor(0.d1d2... * multiplier). Digits beyond the 19th are
  // ignored: with multipliers up to 2^40 they are worth less than a millionth of a byte.
  std::uint64_t numerator = 0;
  std::uint64_t denominator = 1;
  for (std::size_t i = 0; i < fraction_digits.size() && i < 19; ++i) {
    numerator = numerator * 10 + static_cast<std::uint64_t>(fraction_digits[i] - '0');
    denominator *= 10;
  }
  const unsigned __int128 fraction_bytes =
      static_cast<unsigned __int128>(numerator) * multiplier / denominator;
  if (fraction_bytes > kMaxBytes - bytes) {
    throw invalid_size(text, "the value exceeds 2^64 - 1 bytes");
  }
  bytes += static_cast<std::uint64_t>(fraction_bytes);
  return bytes;
}

std::string format_size(std::uint64_t bytes) {
  constexpr std::array<std::string_view, 6> kNames = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < kKiB) {
    return fmt::format("{} B", bytes);
  }
  double value = static_cast<double>(bytes) / 1024.0;
  std::size_t unit = 0;
  while (value >= 1024.0 && unit + 1 < kNames.size()) {
    value /= 1024.0;
    ++unit;
  }
  return fmt::format("{:.2f} {}", value, kNames[unit]);
}

}  // namespace ethereal::memory
