#include "memory/timeline_svg.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <string_view>

#include <fmt/format.h>

#include "runtime/error.h"

namespace ethereal::memory {

namespace {

// Picture geometry in SVG user units (pixels at 100% zoom). The legend sits right of the plot.
constexpr double kWidth = 960.0;
constexpr double kHeight = 480.0;
constexpr double kPlotLeft = 80.0;
constexpr double kPlotRight = 740.0;
constexpr double kPlotTop = 50.0;
constexpr double kPlotBottom = 420.0;
constexpr double kLegendLeft = kPlotRight + 24.0;
// Rotated mark labels are 11 units tall, so closer labels would overlap.
constexpr double kMinLabelGap = 14.0;
constexpr std::size_t kMaxLabelChars = 40;

constexpr double kMiB = 1024.0 * 1024.0;
constexpr double kGiB = 1024.0 * kMiB;

struct Series {
  const char* name;
  const char* color;
  std::uint64_t TimelineSample::*member;
};

constexpr Series kSeries[] = {
    {"device allocated", "#1f77b4", &TimelineSample::device_allocated},
    {"device reserved", "#ff7f0e", &TimelineSample::device_reserved},
    {"process resident", "#2ca02c", &TimelineSample::process_rss},
};

struct Point {
  double x = 0.0;
  double y = 0.0;
};

// Maps time and bytes to picture coordinates.
struct Scale {
  double t_min = 0.0;
  double t_max = 1.0;
  double unit_bytes = kMiB;
  double y_top_units = 1.0;  // the top of the y axis, in units of unit_bytes

  double x(double t_s) const {
    return kPlotLeft + (t_s - t_min) / (t_max - t_min) * (kPlotRight - kPlotLeft);
  }
  double y(double bytes) const {
    return kPlotBottom - bytes / unit_bytes / y_top_units * (kPlotBottom - kPlotTop);
  }
};

// The smallest of 1, 2 or 5 times a power of ten that is at least `raw` (raw > 0).
double nice_step(double raw) {
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  for (const double factor : {1.0, 2.0, 5.0, 10.0}) {
    if (factor * magnitude >= raw * (1.0 - 1e-9)) {
      return factor * magnitude;
    }
  }
  return 10.0 * magnitude;
}

// Digits after the decimal point that tick labels of this step need.
int tick_decimals(double step) {
  return step >= 1.0 ? 0 : static_cast<int>(std::ceil(-std::log10(step) - 1e-9));
}

std::string truncate_label(const std::string& label) {
  if (label.size() <= kMaxLabelChars) {
    return label;
  }
  std::size_t cut = kMaxLabelChars;
  // Cuts before a UTF-8 continuation byte would split a character.
  while (cut > 0 && (static_cast<unsigned char>(label[cut]) & 0xC0) == 0x80) {
    --cut;
  }
  return label.substr(0, cut) + "\u2026";
}

Scale make_scale(const std::vector<TimelineSample>& samples, const std::vector<TimelineMark>& marks,
                 std::optional<std::uint64_t> capacity_bytes) {
  double t_min = std::numeric_limits<double>::infinity();
  double t_max = -std::numeric_limits<double>::infinity();
  std::uint64_t max_bytes = capacity_bytes.value_or(0);
  for (const TimelineSample& sample : samples) {
    t_min = std::min(t_min, sample.t_s);
    t_max = std::max(t_max, sample.t_s);
    max_bytes =
        std::max({max_bytes, sample.device_allocated, sample.device_reserved, sample.process_rss});
  }
  for (const TimelineMark& mark : marks) {
    t_min = std::min(t_min, mark.t_s);
    t_max = std::max(t_max, mark.t_s);
  }

  Scale scale;
  if (t_min <= t_max) {
    scale.t_min = t_min;
    scale.t_max = t_max > t_min ? t_max : t_min + 1.0;
  }
  scale.unit_bytes = static_cast<double>(max_bytes) >= kGiB ? kGiB : kMiB;
  const double max_units = std::max(static_cast<double>(max_bytes) / scale.unit_bytes, 1.0);
  // A little headroom keeps the highest line off the top edge.
  const double step = nice_step(max_units * 1.02 / 5.0);
  scale.y_top_units = step * std::ceil(max_units * 1.02 / step);
  return scale;
}

void append_axes(std::string& svg, const Scale& scale) {
  const char* unit_name = scale.unit_bytes == kGiB ? "GiB" : "MiB";
  const double y_step = nice_step(scale.y_top_units / 5.0);
  const int y_decimals = tick_decimals(y_step);
  for (double value = 0.0; value <= scale.y_top_units * (1.0 + 1e-9); value += y_step) {
    const double y = scale.y(value * scale.unit_bytes);
    svg +=
        fmt::format(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="#e0e0e0"/>)"
                    R"(<text x="{:.1f}" y="{:.1f}" text-anchor="end" font-size="11">{:.{}f}</text>)"
                    "\n",
                    kPlotLeft, y, kPlotRight, y, kPlotLeft - 6.0, y + 4.0, value, y_decimals);
  }

  const double t_step = nice_step((scale.t_max - scale.t_min) / 8.0);
  const int t_decimals = tick_decimals(t_step);
  const double first_tick = std::ceil(scale.t_min / t_step - 1e-9);
  for (double index = first_tick; index * t_step <= scale.t_max + t_step * 1e-9; index += 1.0) {
    // Adding 0.0 turns a tick at -0 into +0, so its label reads "0".
    const double t = index * t_step + 0.0;
    const double x = scale.x(t);
    svg += fmt::format(
        R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="#e0e0e0"/>)"
        R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle" font-size="11">{:.{}f}</text>)"
        "\n",
        x, kPlotTop, x, kPlotBottom, x, kPlotBottom + 16.0, t, t_decimals);
  }

  svg += fmt::format(
      R"(<polyline points="{0:.1f},{1:.1f} {0:.1f},{2:.1f} {3:.1f},{2:.1f}" fill="none" )"
      R"(stroke="#333333"/>)"
      "\n",
      kPlotLeft, kPlotTop, kPlotBottom, kPlotRight);
  svg += fmt::format(
      R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle" font-size="12">time (s)</text>)"
      "\n",
      (kPlotLeft + kPlotRight) / 2.0, kPlotBottom + 36.0);
  const double label_y = (kPlotTop + kPlotBottom) / 2.0;
  svg += fmt::format(R"svg(<text x="20" y="{0:.1f}" transform="rotate(-90 20 {0:.1f})" )svg"
                     R"svg(text-anchor="middle" font-size="12">memory ({1})</text>)svg"
                     "\n",
                     label_y, unit_name);
}

// Keeps the lowest and highest point of each pixel column, in their original order, when there
// are many more points than columns. Points must be sorted by x.
std::vector<Point> thin_points(const std::vector<Point>& points) {
  const auto columns = static_cast<std::size_t>(kPlotRight - kPlotLeft);
  if (points.size() <= 4 * columns) {
    return points;
  }
  std::vector<Point> kept;
  std::size_t begin = 0;
  while (begin < points.size()) {
    const double column = std::floor(points[begin].x);
    std::size_t end = begin;
    std::size_t lowest = begin;   // the largest y coordinate is the lowest reading
    std::size_t highest = begin;  // the smallest y coordinate is the highest reading
    for (; end < points.size() && std::floor(points[end].x) == column; ++end) {
      if (points[end].y > points[lowest].y) {
        lowest = end;
      }
      if (points[end].y < points[highest].y) {
        highest = end;
      }
    }
    kept.push_back(points[std::min(lowest, highest)]);
    if (lowest != highest) {
      kept.push_back(points[std::max(lowest, highest)]);
    }
    begin = end;
  }
  return kept;
}

void append_series(std::string& svg, const Scale& scale,
                   const std::vector<TimelineSample>& samples) {
  for (const Series& series : kSeries) {
    std::vector<Point> points;
    points.reserve(samples.size());
    for (const TimelineSample& sample : samples) {
      points.push_back({scale.x(sample.t_s), scale.y(static_cast<double>(sample.*series.member))});
    }
    std::string coordinates;
    for (const Point& point : thin_points(points)) {
      coordinates +=
          fmt::format("{}{:.1f},{:.1f}", coordinates.empty() ? "" : " ", point.x, point.y);
    }
    svg += fmt::format(
        R"(<polyline class="series" data-series="{}" points="{}" fill="none" stroke="{}" )"
        R"(stroke-width="1.5"/>)"
        "\n",
        series.name, coordinates, series.color);
  }
}

// Draws the capacity line and returns its legend text, "capacity 24.00 GiB".
std::string append_capacity(std::string& svg, const Scale& scale, std::uint64_t capacity_bytes) {
  const double y = scale.y(static_cast<double>(capacity_bytes));
  svg += fmt::format(R"(<line class="capacity" x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" )"
                     R"(stroke="#d62728" stroke-dasharray="8 4"/>)"
                     "\n",
                     kPlotLeft, y, kPlotRight, y);
  return fmt::format("capacity {:.2f} {}", static_cast<double>(capacity_bytes) / scale.unit_bytes,
                     scale.unit_bytes == kGiB ? "GiB" : "MiB");
}

// Returns how many marks got no visible label.
std::size_t append_marks(std::string& svg, const Scale& scale, std::vector<TimelineMark> marks) {
  std::stable_sort(marks.begin(), marks.end(),
                   [](const TimelineMark& a, const TimelineMark& b) { return a.t_s < b.t_s; });
  std::size_t hidden = 0;
  double last_label_x = -std::numeric_limits<double>::infinity();
  for (const TimelineMark& mark : marks) {
    const double x = scale.x(mark.t_s);
    svg += fmt::format(R"(<line class="mark" x1="{0:.1f}" y1="{1:.1f}" x2="{0:.1f}" y2="{2:.1f}" )"
                       R"(stroke="#555555" stroke-dasharray="4 3"><title>{3}</title></line>)"
                       "\n",
                       x, kPlotTop, kPlotBottom, escape_xml(mark.label));
    if (x - last_label_x < kMinLabelGap) {
      ++hidden;
      continue;
    }
    last_label_x = x;
    // Rotated text reads upwards along the right side of its line, starting near the top. Its
    // baseline lies 12 units right of the line because the glyphs extend left of the baseline.
    // A white outline drawn under the glyphs keeps the text readable across the series lines.
    const double anchor_x = x + 12.0;
    const double anchor_y = kPlotTop + 4.0;
    svg += fmt::format(
        R"svg(<text class="mark-label" x="{0:.1f}" y="{1:.1f}" )svg"
        R"svg(transform="rotate(-90 {0:.1f} {1:.1f})" text-anchor="end" font-size="11" )svg"
        R"svg(fill="#555555" stroke="#ffffff" stroke-width="3" paint-order="stroke">{2}</text>)svg"
        "\n",
        anchor_x, anchor_y, escape_xml(truncate_label(mark.label)));
  }
  return hidden;
}

// `capacity_label` is empty when the picture has no capacity line.
void append_legend(std::string& svg, const std::string& capacity_label, std::size_t hidden_labels) {
  double y = kPlotTop + 6.0;
  const auto entry = [&](const char* color, const char* dash, std::string_view name) {
    svg += fmt::format(
        R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="{}" stroke-width="2"{}/>)"
        R"(<text x="{:.1f}" y="{:.1f}" font-size="12">{}</text>)"
        "\n",
        kLegendLeft, y, kLegendLeft + 24.0, y, color, dash, kLegendLeft + 30.0, y + 4.0, name);
    y += 20.0;
  };
  for (const Series& series : kSeries) {
    entry(series.color, "", series.name);
  }
  if (!capacity_label.empty()) {
    entry("#d62728", R"( stroke-dasharray="8 4")", capacity_label);
  }
  entry("#555555", R"( stroke-dasharray="4 3")", "event");
  if (hidden_labels > 0) {
    svg += fmt::format(
        R"(<text x="{:.1f}" y="{:.1f}" font-size="11" fill="#555555">{} {} hidden;</text>)"
        R"(<text x="{:.1f}" y="{:.1f}" font-size="11" fill="#555555">hover a line to read it</text>)"
        "\n",
        kLegendLeft, y + 4.0, hidden_labels, hidden_labels == 1 ? "label" : "labels", kLegendLeft,
        y + 18.0);
  }
}

[[noreturn]] void throw_write_error(const std::filesystem::path& path, std::string_view action,
                                    int error) {
  const std::string message = fmt::format("cannot write memory timeline '{}': {} failed: {}",
                                          path.string(), action, std::strerror(error));
  if (error == ENOENT || error == ENOTDIR || error == EACCES || error == EROFS) {
    throw InvalidInputError(message + "; check that the directory exists and is writable");
  }
  throw IoError(message);
}

}  // namespace

std::string escape_xml(const std::string& text) {
  std::string escaped;
  escaped.reserve(text.size());
  for (const char c : text) {
    switch (c) {
      case '&': escaped += "&amp;"; break;
      case '<': escaped += "&lt;"; break;
      case '>': escaped += "&gt;"; break;
      case '"': escaped += "&quot;"; break;
      case '\'': escaped += "&apos;"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n' && c != '\r') {
          escaped += ' ';
        } else {
          escaped += c;
        }
    }
  }
  return escaped;
}

std::string render_timeline_svg(const std::vector<TimelineSample>& samples,
                                const std::vector<TimelineMark>& marks,
                                std::optional<std::uint64_t> capacity_bytes,
                                const std::string& title) {
  std::vector<TimelineSample> finite_samples;
  for (const TimelineSample& sample : samples) {
    if (std::isfinite(sample.t_s)) {
      finite_samples.push_back(sample);
    }
  }
  std::stable_sort(finite_samples.begin(), finite_samples.end(),
                   [](const TimelineSample& a, const TimelineSample& b) { return a.t_s < b.t_s; });
  std::vector<TimelineMark> finite_marks;
  for (const TimelineMark& mark : marks) {
    if (std::isfinite(mark.t_s)) {
      finite_marks.push_back(mark);
    }
  }
  if (capacity_bytes == 0) {
    capacity_bytes.reset();
  }

  const Scale scale = make_scale(finite_samples, finite_marks, capacity_bytes);
  std::string svg =
      fmt::format(R"(<?xml version="1.0" encoding="UTF-8"?>)"
                  "\n"
                  R"(<svg xmlns="http://www.w3.org/2000/svg" width="{0}" height="{1}" )"
                  R"(viewBox="0 0 {0} {1}" font-family="sans-serif">)"
                  "\n"
                  R"(<title>{2}</title>)"
                  "\n"
                  R"(<rect width="{0}" height="{1}" fill="#ffffff"/>)"
                  "\n"
                  R"(<text x="{3:.1f}" y="28" font-size="16">{2}</text>)"
                  "\n",
                  kWidth, kHeight, escape_xml(title), kPlotLeft);
  append_axes(svg, scale);
  if (finite_samples.empty()) {
    svg += fmt::format(
        R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle" font-size="14" fill="#555555">)"
        R"(no memory samples recorded</text>)"
        "\n",
        (kPlotLeft + kPlotRight) / 2.0, (kPlotTop + kPlotBottom) / 2.0);
  } else {
    append_series(svg, scale, finite_samples);
  }
  std::string capacity_label;
  if (capacity_bytes) {
    capacity_label = append_capacity(svg, scale, *capacity_bytes);
  }
  const std::size_t hidden_labels = append_marks(svg, scale, finite_marks);
  append_legend(svg, capacity_label, hidden_labels);
  svg += "</svg>\n";
  return svg;
}

void write_timeline_svg(const std::filesystem::path& path,
                        const std::vector<TimelineSample>& samples,
                        const std::vector<TimelineMark>& marks,
                        std::optional<std::uint64_t> capacity_bytes, const std::string& title) {
  const std::string svg = render_timeline_svg(samples, marks, capacity_bytes, title);

  // The counter keeps names unique between threads; O_EXCL skips names a crashed process left.
  static std::atomic<unsigned> counter{0};
  std::filesystem::path temporary;
  int fd = -1;
  for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {
    temporary = path;
    temporary += fmt::format(".tmp.{}.{}", ::getpid(), counter++);
    fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) {
      throw_write_error(path, "creating a temporary file", errno);
    }
  }
  if (fd < 0) {
    throw_write_error(path, "creating a temporary file", EEXIST);
  }

  std::string_view remaining = svg;
  int error = 0;
  while (!remaining.empty() && error == 0) {
    const ssize_t written = ::write(fd, remaining.data(), remaining.size());
    if (written >= 0) {
      remaining.remove_prefix(static_cast<std::size_t>(written));
    } else if (errno != EINTR) {
      error = errno;
    }
  }
  if (error == 0 && ::fsync(fd) != 0) {
    error = errno;
  }
  if (::close(fd) != 0 && error == 0) {
    error = errno;
  }
  if (error == 0 && ::rename(temporary.c_str(), path.c_str()) != 0) {
    error = errno;
  }
  if (error != 0) {
    ::unlink(temporary.c_str());
    throw_write_error(path, "writing", error);
  }
}

}  // namespace ethereal::memory
