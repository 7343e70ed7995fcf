#include "memory/timestamp.h"

#include <ctime>

#include <fmt/format.h>

namespace ethereal::memory {

std::string format_utc_timestamp(std::chrono::system_clock::time_point time) {
  const std::time_t seconds = std::chrono::system_clock::to_time_t(time);
  std::tm utc{};
  ::gmtime_r(&seconds, &utc);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", utc.tm_year + 1900, utc.tm_mon + 1,
                     utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec);
}

std::string utc_timestamp_now() {
  return format_utc_timestamp(std::chrono::system_clock::now());
}

}  // namespace ethereal::memory
