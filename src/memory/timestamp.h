// UTC timestamps as written into run logs and the history database.
#pragma once

#include <chrono>
#include <string>

namespace ethereal::memory {

// Formats `time` as ISO 8601 UTC with whole seconds, "2026-01-23T10:00:00Z". Strings of this
// form sort in time order and are understood by SQLite's date functions.
std::string format_utc_timestamp(std::chrono::system_clock::time_point time);

// format_utc_timestamp of the current time.
std::string utc_timestamp_now();

}  // namespace ethereal::memory
