#include "memory/timeline_svg.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "memory_log/test_files.h"
#include "runtime/error.h"

namespace ethereal::test {
namespace {

using memory::TimelineMark;
using memory::TimelineSample;

constexpr std::uint64_t kMiB = 1024ull * 1024;
constexpr std::uint64_t kGiB = 1024ull * kMiB;

struct Element {
  std::string name;
  std::map<std::string, std::string> attributes;
  std::string text;  // character data directly inside, entities left as written
};

// A minimal XML reader: enough to prove the picture is well-formed (balanced tags, quoted
// attributes, no raw '<' or stray '&' in text) and to collect its elements.
class XmlChecker {
 public:
  explicit XmlChecker(std::string text) : text_(std::move(text)) {}

  // Returns the elements in document order; fails the test at the first problem.
  std::vector<Element> parse() {
    std::vector<Element> elements;
    std::vector<std::size_t> open;  // indices into elements
    std::size_t roots = 0;
    while (at_ < text_.size()) {
      if (text_[at_] != '<') {
        const std::size_t end = text_.find('<', at_);
        const std::string text = text_.substr(at_, end - at_);
        check_entities(text);
        if (!open.empty()) {
          elements[open.back()].text += text;
        } else {
          EXPECT_EQ(text.find_first_not_of(" \n\t\r"), std::string::npos)
              << "text outside the root: " << text;
        }
        at_ = end == std::string::npos ? text_.size() : end;
      } else if (text_.compare(at_, 2, "<?") == 0) {
        at_ = text_.find("?>", at_) + 2;
      } else if (text_.compare(at_, 2, "</") == 0) {
        const std::size_t end = text_.find('>', at_);
        const std::string name = text_.substr(at_ + 2, end - at_ - 2);
        if (open.empty()) {
          ADD_FAILURE() << "closing tag without opening tag: " << name;
          return elements;
        }
        EXPECT_EQ(elements[open.back()].name, name) << "mismatched closing tag";
        open.pop_back();
        at_ = end + 1;
      } else {
        if (open.empty()) {
          ++roots;
        }
        Element element;
        const bool self_closing = read_start_tag(element);
        elements.push_back(element);
        if (!self_closing) {
          open.push_back(elements.size() - 1);
        }
      }
    }
    EXPECT_TRUE(open.empty()) << open.size() << " elements left open";
    EXPECT_EQ(roots, 1u);
    return elements;
  }

 private:
  // Reads "<name attr="value" ...>" or ".../>"; returns whether the tag closes itself.
  bool read_start_tag(Element& element) {
    ++at_;
    const std::size_t name_end = text_.find_first_of(" />", at_);
    element.name = text_.substr(at_, name_end - at_);
    at_ = name_end;
    while (true) {
      while (text_[at_] == ' ' || text_[at_] == '\n') {
        ++at_;
      }
      if (text_.compare(at_, 2, "/>") == 0) {
        at_ += 2;
        return true;
      }
      if (text_[at_] == '>') {
        ++at_;
        return false;
      }
      const std::size_t equals = text_.find('=', at_);
      const std::string name = text_.substr(at_, equals - at_);
      EXPECT_EQ(text_[equals + 1], '"') << "unquoted attribute " << name;
      const std::size_t value_end = text_.find('"', equals + 2);
      const std::string value = text_.substr(equals + 2, value_end - equals - 2);
      EXPECT_EQ(value.find('<'), std::string::npos) << "raw '<' in attribute " << name;
      check_entities(value);
      EXPECT_FALSE(element.attributes.contains(name)) << "duplicate attribute " << name;
      element.attributes[name] = value;
      at_ = value_end + 1;
    }
  }

  static void check_entities(const std::string& text) {
    for (std::size_t at = text.find('&'); at != std::string::npos; at = text.find('&', at + 1)) {
      bool known = false;
      for (const char* entity : {"&amp;", "&lt;", "&gt;", "&quot;", "&apos;"}) {
        known = known || text.compare(at, std::string(entity).size(), entity) == 0;
      }
      EXPECT_TRUE(known) << "stray '&' in: " << text;
    }
  }

  std::string text_;
  std::size_t at_ = 0;
};

std::vector<Element> with_name(const std::vector<Element>& elements, const std::string& name,
                               const std::string& css_class = "") {
  std::vector<Element> found;
  for (const Element& element : elements) {
    const auto klass = element.attributes.find("class");
    const bool class_matches =
        css_class.empty() || (klass != element.attributes.end() && klass->second == css_class);
    if (element.name == name && class_matches) {
      found.push_back(element);
    }
  }
  return found;
}

struct Point {
  double x;
  double y;
};

std::vector<Point> polyline_points(const Element& polyline) {
  std::vector<Point> points;
  std::istringstream in(polyline.attributes.at("points"));
  for (std::string pair; in >> pair;) {
    const std::size_t comma = pair.find(',');
    points.push_back({std::stod(pair.substr(0, comma)), std::stod(pair.substr(comma + 1))});
  }
  return points;
}

// Every coordinate attribute parses as a finite number.
void expect_finite_coordinates(const std::vector<Element>& elements) {
  for (const Element& element : elements) {
    for (const char* name : {"x", "y", "x1", "y1", "x2", "y2", "width", "height"}) {
      const auto found = element.attributes.find(name);
      if (found != element.attributes.end()) {
        EXPECT_TRUE(std::isfinite(std::stod(found->second)))
            << element.name << " " << name << "=" << found->second;
      }
    }
    if (element.name == "polyline") {
      for (const Point& point : polyline_points(element)) {
        EXPECT_TRUE(std::isfinite(point.x));
        EXPECT_TRUE(std::isfinite(point.y));
      }
    }
  }
}

std::vector<TimelineSample> ramp_samples(int count, double seconds, std::uint64_t top_bytes) {
  std::vector<TimelineSample> samples;
  for (int i = 0; i < count; ++i) {
    const double fraction = static_cast<double>(i) / (count - 1);
    const auto bytes = static_cast<std::uint64_t>(fraction * static_cast<double>(top_bytes));
    samples.push_back({fraction * seconds, bytes / 2, bytes, bytes + 256 * kMiB});
  }
  return samples;
}

TEST(TimelineSvg, WellFormedWithSeriesMarksAndCapacity) {
  const std::vector<TimelineSample> samples = ramp_samples(20, 12.0, 6 * kGiB);
  const std::vector<TimelineMark> marks = {
      {1.0, "load: fp16_full"},
      {6.0, "fallback <fp16_full> & \"fp8\" 'x'"},
      {11.0, "stage_peak: vae_decode"},
  };
  const std::string svg = memory::render_timeline_svg(samples, marks, 8 * kGiB, "edit <run & 7>");
  const std::vector<Element> elements = XmlChecker(svg).parse();
  expect_finite_coordinates(elements);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.find("inf"), std::string::npos);
  EXPECT_EQ(svg.find("<script"), std::string::npos);
  EXPECT_EQ(svg.find("href"), std::string::npos);

  ASSERT_FALSE(elements.empty());
  EXPECT_EQ(elements[0].name, "svg");

  const std::vector<Element> series = with_name(elements, "polyline", "series");
  ASSERT_EQ(series.size(), 3u);
  std::vector<std::string> names;
  for (const Element& polyline : series) {
    names.push_back(polyline.attributes.at("data-series"));
    EXPECT_EQ(polyline_points(polyline).size(), samples.size());
    for (const Point& point : polyline_points(polyline)) {
      EXPECT_GE(point.x, 80.0 - 1e-6);
      EXPECT_LE(point.x, 740.0 + 1e-6);
      EXPECT_GE(point.y, 50.0 - 1e-6);
      EXPECT_LE(point.y, 420.0 + 1e-6);
    }
  }
  EXPECT_EQ(names,
            (std::vector<std::string>{"device allocated", "device reserved", "process resident"}));
  // The legend names each series.
  for (const std::string& name : names) {
    EXPECT_NE(svg.find(">" + name + "</text>"), std::string::npos) << name;
  }

  EXPECT_EQ(with_name(elements, "line", "mark").size(), marks.size());
  EXPECT_EQ(with_name(elements, "text", "mark-label").size(), marks.size());
  EXPECT_NE(svg.find("fallback &lt;fp16_full&gt; &amp; &quot;fp8&quot; &apos;x&apos;"),
            std::string::npos);
  EXPECT_NE(svg.find("edit &lt;run &amp; 7&gt;"), std::string::npos);

  const std::vector<Element> capacity = with_name(elements, "line", "capacity");
  ASSERT_EQ(capacity.size(), 1u);
  EXPECT_EQ(capacity[0].attributes.at("y1"), capacity[0].attributes.at("y2"));
  EXPECT_NE(svg.find("capacity 8.00 GiB"), std::string::npos);
  EXPECT_NE(svg.find("memory (GiB)"), std::string::npos);
  EXPECT_NE(svg.find("time (s)"), std::string::npos);
}

TEST(TimelineSvg, CapacityLineAboveHighestSample) {
  const std::string svg =
      memory::render_timeline_svg(ramp_samples(5, 1.0, 4 * kGiB), {}, 8 * kGiB, "t");
  const std::vector<Element> elements = XmlChecker(svg).parse();
  const double capacity_y =
      std::stod(with_name(elements, "line", "capacity")[0].attributes.at("y1"));
  for (const Element& polyline : with_name(elements, "polyline", "series")) {
    for (const Point& point : polyline_points(polyline)) {
      EXPECT_GT(point.y, capacity_y);  // larger y is lower on the picture
    }
  }
}

TEST(TimelineSvg, SmallValuesUseMib) {
  const std::string svg =
      memory::render_timeline_svg(ramp_samples(5, 1.0, 300 * kMiB), {}, std::nullopt, "small");
  const std::vector<Element> elements = XmlChecker(svg).parse();
  EXPECT_NE(svg.find("memory (MiB)"), std::string::npos);
  EXPECT_TRUE(with_name(elements, "line", "capacity").empty());
}

TEST(TimelineSvg, CrowdedMarksKeepLinesAndTooltips) {
  std::vector<TimelineMark> marks;
  for (int i = 0; i < 60; ++i) {
    marks.push_back({50.0 + 0.01 * i, "onload block " + std::to_string(i)});
  }
  const std::string svg = memory::render_timeline_svg(ramp_samples(10, 100.0, 2 * kGiB), marks,
                                                      std::nullopt, "crowded");
  const std::vector<Element> elements = XmlChecker(svg).parse();
  EXPECT_EQ(with_name(elements, "line", "mark").size(), 60u);
  const std::size_t labels = with_name(elements, "text", "mark-label").size();
  EXPECT_GE(labels, 1u);
  EXPECT_LT(labels, 5u);
  EXPECT_EQ(with_name(elements, "title", "").size(), 61u);  // the picture's and one per mark
  EXPECT_NE(svg.find("labels hidden"), std::string::npos);
  EXPECT_NE(svg.find("<title>onload block 59</title>"), std::string::npos);
}

TEST(TimelineSvg, NonFiniteTimesAreLeftOut) {
  std::vector<TimelineSample> samples = ramp_samples(4, 3.0, kGiB);
  samples.push_back({std::numeric_limits<double>::quiet_NaN(), kGiB, kGiB, kGiB});
  samples.push_back({std::numeric_limits<double>::infinity(), kGiB, kGiB, kGiB});
  const std::vector<TimelineMark> marks = {{std::numeric_limits<double>::quiet_NaN(), "bad"},
                                           {1.0, "good"}};
  const std::string svg = memory::render_timeline_svg(samples, marks, std::nullopt, "t");
  const std::vector<Element> elements = XmlChecker(svg).parse();
  expect_finite_coordinates(elements);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.find("inf"), std::string::npos);
  EXPECT_EQ(polyline_points(with_name(elements, "polyline", "series")[0]).size(), 4u);
  EXPECT_EQ(with_name(elements, "line", "mark").size(), 1u);
}

TEST(TimelineSvg, EmptyTimelineIsStillAPicture) {
  const std::string svg = memory::render_timeline_svg({}, {}, std::nullopt, "empty");
  const std::vector<Element> elements = XmlChecker(svg).parse();
  expect_finite_coordinates(elements);
  EXPECT_NE(svg.find("no memory samples recorded"), std::string::npos);
}

TEST(TimelineSvg, ManySamplesKeepThePeak) {
  // A lone spike among 100000 flat samples, and the same spike among three samples. Both share
  // the time range and the maximum, so the spike lands at the same height.
  std::vector<TimelineSample> dense;
  for (int i = 0; i <= 100000; ++i) {
    const std::uint64_t bytes = i == 50017 ? 3 * kGiB : kGiB;
    dense.push_back({i * 0.001, bytes, bytes, bytes});
  }
  const std::vector<TimelineSample> sparse = {
      {0.0, kGiB, kGiB, kGiB}, {50.017, 3 * kGiB, 3 * kGiB, 3 * kGiB}, {100.0, kGiB, kGiB, kGiB}};

  const auto highest_point = [](const std::string& svg) {
    const std::vector<Element> elements = XmlChecker(svg).parse();
    const std::vector<Element> series = with_name(elements, "polyline", "series");
    std::vector<Point> points = polyline_points(series.at(0));
    double top = std::numeric_limits<double>::infinity();
    for (const Point& point : points) {
      top = std::min(top, point.y);
    }
    return std::make_pair(top, points.size());
  };
  const auto [dense_top, dense_count] =
      highest_point(memory::render_timeline_svg(dense, {}, std::nullopt, "dense"));
  const auto [sparse_top, sparse_count] =
      highest_point(memory::render_timeline_svg(sparse, {}, std::nullopt, "sparse"));
  EXPECT_DOUBLE_EQ(dense_top, sparse_top);
  EXPECT_EQ(sparse_count, 3u);
  EXPECT_LT(dense_count, 5000u);
}

TEST(WriteTimelineSvg, ReplacesFileWithoutLeftovers) {
  const TemporaryDirectory dir;
  const auto path = dir / "run.timeline.svg";
  { std::ofstream(path) << "old"; }
  memory::write_timeline_svg(path, ramp_samples(3, 1.0, kGiB), {{0.5, "mid"}}, kGiB, "run");
  const std::string svg = read_file(path);
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  XmlChecker(svg).parse();
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    ++files;
  }
  EXPECT_EQ(files, 1u);
}

TEST(WriteTimelineSvg, MissingDirectoryNamesFile) {
  const TemporaryDirectory dir;
  const auto path = dir / "missing" / "run.timeline.svg";
  try {
    memory::write_timeline_svg(path, {}, {}, std::nullopt, "run");
    FAIL() << "expected InvalidInputError";
  } catch (const InvalidInputError& error) {
    EXPECT_NE(std::string(error.what()).find(path.string()), std::string::npos) << error.what();
  }
}

}  // namespace
}  // namespace ethereal::test
