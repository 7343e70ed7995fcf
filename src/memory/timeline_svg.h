// A memory timeline of one run drawn as a self-contained SVG picture: no scripts, no external
// references, so any browser or image viewer opens it offline.
//
// The x axis is time in seconds. The y axis is memory in MiB, or in GiB when the largest value
// reaches 1 GiB. Each series (device allocated, device reserved, process resident) is one
// polyline named in the legend. Each mark is a dashed vertical line, and a given device
// capacity is a dashed horizontal line.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace ethereal::memory {

// One reading of the memory figures, in bytes, at t_s seconds since the run's origin.
struct TimelineSample {
  double t_s = 0.0;
  std::uint64_t device_allocated = 0;
  std::uint64_t device_reserved = 0;
  std::uint64_t process_rss = 0;
};

// A moment worth a label: a stage boundary, a fallback, an out-of-memory error.
struct TimelineMark {
  double t_s = 0.0;
  std::string label;
};

// Renders the timeline. Samples may come in any order and are drawn sorted by time. Samples
// and marks whose time is not finite are left out. When marks crowd together, only the first of
// each crowded group gets a visible label, but every mark line carries its label as a <title>
// tooltip. With many more samples than horizontal pixels, each pixel column keeps its lowest
// and highest reading, so peaks stay visible.
std::string render_timeline_svg(const std::vector<TimelineSample>& samples,
                                const std::vector<TimelineMark>& marks,
                                std::optional<std::uint64_t> capacity_bytes,
                                const std::string& title);

// Writes render_timeline_svg's picture to `path` through a temporary file in the same directory
// that is renamed over `path`, so readers never see a partial picture. Throws
// InvalidInputError when the directory is missing or not writable and IoError when writing
// fails, naming the file.
void write_timeline_svg(const std::filesystem::path& path,
                        const std::vector<TimelineSample>& samples,
                        const std::vector<TimelineMark>& marks,
                        std::optional<std::uint64_t> capacity_bytes, const std::string& title);

// Escapes text for XML character data and attribute values: & < > " ' become entities, and
// control characters that XML 1.0 forbids become spaces.
std::string escape_xml(const std::string& text);

}  // namespace ethereal::memory
