#include "memory/size.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "memory_test_support.h"
#include "runtime/error.h"

namespace ethereal::memory {
namespace {

constexpr std::uint64_t kKiB = 1024;
constexpr std::uint64_t kMiB = kKiB * 1024;
constexpr std::uint64_t kGiB = kMiB * 1024;
constexpr std::uint64_t kTiB = kGiB * 1024;

TEST(ParseSize, AcceptsBytesAndUnits) {
  const std::vector<std::pair<std::string, std::uint64_t>> cases = {
      {"0", 0},
      {"1048576", kMiB},
      {"512B", 512},
      {"4KiB", 4 * kKiB},
      {"512MiB", 512 * kMiB},
      {"8GiB", 8 * kGiB},
      {"2TiB", 2 * kTiB},
      {"8K", 8 * kKiB},
      {"8M", 8 * kMiB},
      {"8G", 8 * kGiB},
      {"1T", kTiB},
      {"3KB", 3000},
      {"3MB", 3'000'000},
      {"8GB", 8'000'000'000},
      {"2TB", 2'000'000'000'000},
      {"8gib", 8 * kGiB},
      {"8 GiB", 8 * kGiB},
      {"1.5GiB", kGiB + kGiB / 2},
      {"0.5K", 512},
      {"1.0001K", 1024},  // 1024.1024 bytes, rounded down
      {"18446744073709551615", 18446744073709551615ull},
  };
  for (const auto& [text, expected] : cases) {
    EXPECT_EQ(parse_size(text), expected) << text;
  }
}

TEST(ParseSize, RejectsInvalidText) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "empty"},
      {"12XB", "unknown unit 'XB'"},
      {"-1", "no sign"},
      {"+1", "no sign"},
      {"GiB", "does not start with a number"},
      {".5G", "does not start with a number"},
      {"1.G", "decimal point"},
      {"1.5", "whole"},
      {"8 GiB ", "unknown unit"},
      {"18446744073709551616", "exceeds"},
      {"16777216TiB", "exceeds"},
      {"17179869184GiB", "exceeds"},
  };
  for (const auto& [text, fragment] : cases) {
    const std::string message =
        testing::error_message<InvalidInputError>([&] { parse_size(text); });
    EXPECT_NE(message.find(fragment), std::string::npos) << text << ": " << message;
    EXPECT_NE(message.find("'" + text + "'"), std::string::npos) << message;
  }
}

TEST(FormatSize, UsesBinaryUnits) {
  EXPECT_EQ(format_size(0), "0 B");
  EXPECT_EQ(format_size(1023), "1023 B");
  EXPECT_EQ(format_size(1024), "1.00 KiB");
  EXPECT_EQ(format_size(1536 * kMiB), "1.50 GiB");
  EXPECT_EQ(format_size(812 * kMiB + 410 * kKiB), "812.40 MiB");
  EXPECT_EQ(format_size(3 * kTiB), "3.00 TiB");
}

}  // namespace
}  // namespace ethereal::memory
