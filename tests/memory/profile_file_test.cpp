#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "memory/profiler.h"
#include "memory_test_support.h"
#include "runtime/allocator.h"
#include "runtime/error.h"

namespace ethereal::memory {
namespace {

using testing::error_message;
using testing::TemporaryDirectory;

LoadProfile recorded_profile() {
  CpuCachingAllocator allocator;
  ScopedAllocator scope(allocator);
  MemoryProfiler profiler;
  Allocation block;
  LoadProfile profile = profiler.profile_model_loading(
      "round trip",
      [&] {
        profiler.mark_stage("text_encoder");
        block = allocator.allocate(2 << 20);
      },
      std::chrono::milliseconds(1));
  allocator.deallocate(block);
  return profile;
}

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::string load_error(const std::filesystem::path& path) {
  return error_message<InvalidInputError>([&] { load_profile(path); });
}

void expect_contains(const std::string& text, const std::string& fragment) {
  EXPECT_NE(text.find(fragment), std::string::npos) << "'" << fragment << "' is not in: " << text;
}

TEST(ProfileFile, RoundTrip) {
  TemporaryDirectory directory;
  LoadProfile profile = recorded_profile();
  profile.samples.front().cgroup_limit_bytes = 8ull << 30;
  profile.samples.front().cgroup_usage_bytes = 1ull << 30;
  profile.samples.back().cgroup_limit_bytes.reset();
  const std::filesystem::path path = directory / "profile.json";
  save_profile(profile, path);

  const LoadProfile loaded = load_profile(path);
  EXPECT_EQ(loaded.to_json(), profile.to_json());
  EXPECT_EQ(loaded.name, "round trip");
  EXPECT_EQ(loaded.load_s, profile.load_s);
  EXPECT_EQ(loaded.peak_bytes_per_tier, profile.peak_bytes_per_tier);
  ASSERT_EQ(loaded.samples.size(), profile.samples.size());
  EXPECT_EQ(loaded.samples.front().cgroup_limit_bytes, 8ull << 30);
  EXPECT_FALSE(loaded.samples.back().cgroup_limit_bytes);
  ASSERT_EQ(loaded.marks.size(), 1u);
  EXPECT_EQ(loaded.marks[0].name, "text_encoder");
  EXPECT_EQ(loaded.marks[0].timestamp, profile.marks[0].timestamp);

  // Only the target remains: the temporary file was renamed.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(directory.path()),
                          std::filesystem::directory_iterator()),
            1);
}

TEST(ProfileFile, SaveIntoMissingFolderFails) {
  TemporaryDirectory directory;
  const std::filesystem::path path = directory / "absent" / "profile.json";
  const std::string message = error_message<IoError>([&] { save_profile(LoadProfile{}, path); });
  expect_contains(message, path.string());
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(ProfileFile, MissingFile) {
  TemporaryDirectory directory;
  const std::filesystem::path path = directory / "absent.json";
  expect_contains(load_error(path), path.string());
}

TEST(ProfileFile, InvalidJson) {
  TemporaryDirectory directory;
  const std::filesystem::path path = directory / "broken.json";
  write_text(path, "{\"format\": ");
  const std::string message = load_error(path);
  expect_contains(message, path.string());
  expect_contains(message, "invalid JSON");
}

TEST(ProfileFile, BadFieldsNameTheField) {
  TemporaryDirectory directory;
  const std::filesystem::path path = directory / "profile.json";
  const nlohmann::json valid = recorded_profile().to_json();

  struct Case {
    std::string description;
    std::function<void(nlohmann::json&)> change;
    std::string field;
    std::string fragment;
  };
  const std::vector<Case> cases = {
      {"top level array", [](nlohmann::json& j) { j = nlohmann::json::array(); }, "(top level)",
       "expected an object"},
      {"other format", [](nlohmann::json& j) { j["format"] = "something-else"; }, "format",
       "not a load profile"},
      {"newer version", [](nlohmann::json& j) { j["version"] = 2; }, "version", "not supported"},
      {"missing load_s", [](nlohmann::json& j) { j.erase("load_s"); }, "load_s", "missing"},
      {"load_s as text", [](nlohmann::json& j) { j["load_s"] = "fast"; }, "load_s",
       "expected a number"},
      {"negative peak", [](nlohmann::json& j) { j["peak_bytes_per_tier"]["host"] = -1; },
       "peak_bytes_per_tier.host", "non-negative"},
      {"samples not a list", [](nlohmann::json& j) { j["samples"] = 3; }, "samples",
       "expected an array"},
      {"sample field as text",
       [](nlohmann::json& j) { j["samples"][0]["process_rss_bytes"] = "12"; },
       "samples[0].process_rss_bytes", "expected a non-negative whole number"},
      {"missing sample field", [](nlohmann::json& j) { j["samples"][1].erase("device"); },
       "samples[1].device", "missing"},
      {"fractional bytes", [](nlohmann::json& j) { j["samples"][0]["pinned_bytes"] = 1.5; },
       "samples[0].pinned_bytes", "whole number"},
      {"mark without name", [](nlohmann::json& j) { j["marks"][0].erase("name"); }, "marks[0].name",
       "missing"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.description);
    nlohmann::json document = valid;
    c.change(document);
    write_text(path, document.dump());
    const std::string message = load_error(path);
    expect_contains(message, path.string());
    expect_contains(message, "field " + c.field + ":");
    expect_contains(message, c.fragment);
  }
}

}  // namespace
}  // namespace ethereal::memory
