#include "memory/run_log.h"

#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "memory_log/test_files.h"
#include "runtime/error.h"

namespace ethereal::test {
namespace {

using memory::RunKind;
using memory::RunLogEntry;

constexpr std::uint64_t kMiB = 1024ull * 1024;
constexpr std::uint64_t kGiB = 1024ull * kMiB;

RunLogEntry sample_load_entry() {
  RunLogEntry entry;
  entry.kind = RunKind::load;
  entry.timestamp_utc = "2026-01-23T10:00:00Z";
  entry.strategy = "fp8_optimized";
  entry.device = "cuda:0";
  entry.available_device_bytes = 24 * kGiB;
  entry.available_host_bytes = 812 * kMiB + 400 * 1024;
  entry.duration_s = 3.2;
  entry.peak_device_bytes = 8 * kGiB + 717 * kMiB;
  entry.peak_host_bytes = 2 * kGiB;
  entry.success = true;
  entry.optimizations = {"fp8 weights with per-row scales", "Lightning LoRA (8 steps)"};
  entry.fallbacks = {"fp16_full -> fp8_optimized: out of memory on cuda:0"};
  entry.stage_s = {{"text_encoding", 1.25}, {"denoising", 20.5}};
  return entry;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(FormatMemorySize, UsesMibBelowOneGib) {
  EXPECT_EQ(memory::format_memory_size(0), "0.0 MiB");
  EXPECT_EQ(memory::format_memory_size(812 * kMiB + 400 * 1024), "812.4 MiB");
  EXPECT_EQ(memory::format_memory_size(kGiB - 1), "1024.0 MiB");
  EXPECT_EQ(memory::format_memory_size(kGiB), "1.00 GiB");
  EXPECT_EQ(memory::format_memory_size(24 * kGiB), "24.00 GiB");
}

TEST(RunLogMarkdown, LoadEntryHasEveryField) {
  const std::string markdown = memory::render_markdown(sample_load_entry());
  EXPECT_EQ(markdown.rfind("## Memory Management Log Entry\n", 0), 0u) << markdown;
  const std::vector<std::string> expected_lines = {
      "### Load: fp8_optimized",
      "- Time (UTC): 2026-01-23T10:00:00Z",
      "- Kind: load",
      "- Strategy: fp8_optimized",
      "- Device: cuda:0",
      "- Available device memory: 24.00 GiB",
      "- Available host memory: 812.4 MiB",
      "- Load time: 3.20 s",
      "- Peak device memory: 8.70 GiB",
      "- Peak host memory: 2.00 GiB",
      "- Success: true",
      "- Error: none",
      "### Optimizations applied",
      "- fp8 weights with per-row scales",
      "- Lightning LoRA (8 steps)",
      "### Fallbacks",
      "- fp16_full -> fp8_optimized: out of memory on cuda:0",
      "### Stage times",
      "- denoising: 20.500 s",
      "- text_encoding: 1.250 s",
  };
  const std::vector<std::string> lines = split_lines(markdown);
  const std::set<std::string> line_set(lines.begin(), lines.end());
  for (const std::string& line : expected_lines) {
    EXPECT_TRUE(line_set.contains(line)) << "missing line: " << line << "\n" << markdown;
  }
}

TEST(RunLogMarkdown, EditEntryNamesEditAndEmptyLists) {
  RunLogEntry entry;
  entry.kind = RunKind::edit;
  entry.strategy = "cpu_offload";
  entry.device = "cpu";
  entry.duration_s = 61.0;
  entry.success = false;
  entry.error = "out of memory on cpu:\n# not a heading\nrequested 512.0 MiB";

  const std::string markdown = memory::render_markdown(entry);
  EXPECT_TRUE(contains(markdown, "### Edit: cpu_offload\n")) << markdown;
  EXPECT_TRUE(contains(markdown, "- Edit time: 61.00 s\n")) << markdown;
  EXPECT_TRUE(contains(markdown, "- Success: false\n")) << markdown;
  EXPECT_TRUE(
      contains(markdown, "- Error: out of memory on cpu: # not a heading requested 512.0 MiB\n"))
      << markdown;
  EXPECT_TRUE(contains(markdown, "### Optimizations applied\n- none\n")) << markdown;
  EXPECT_TRUE(contains(markdown, "### Fallbacks\n- none\n")) << markdown;
  EXPECT_TRUE(contains(markdown, "### Stage times\n- none\n")) << markdown;
  for (const std::string& line : split_lines(markdown)) {
    EXPECT_NE(line.rfind("# not", 0), 0u) << "error text started a line: " << line;
  }
}

TEST(AppendRunLog, CreatesDirectoryAndAppends) {
  const TemporaryDirectory dir;
  const auto log_dir = dir / "nested" / "logs";
  RunLogEntry first = sample_load_entry();
  RunLogEntry second = sample_load_entry();
  second.kind = RunKind::edit;
  second.strategy = "nf4_quantized";

  const auto path = memory::append_run_log(log_dir, first);
  EXPECT_EQ(path, log_dir / "memory_log.md");
  memory::append_run_log(log_dir, second);

  const std::string text = read_file(path);
  std::size_t headings = 0;
  for (std::size_t at = text.find("## Memory Management Log Entry"); at != std::string::npos;
       at = text.find("## Memory Management Log Entry", at + 1)) {
    ++headings;
  }
  EXPECT_EQ(headings, 2u);
  EXPECT_LT(text.find("### Load: fp8_optimized"), text.find("### Edit: nf4_quantized"));
}

TEST(AppendRunLog, UnwritableDirectoryNamesIt) {
  const TemporaryDirectory dir;
  const auto blocker = dir / "file";
  { std::ofstream(blocker) << "not a directory"; }
  try {
    memory::append_run_log(blocker / "logs", sample_load_entry());
    FAIL() << "expected InvalidInputError";
  } catch (const InvalidInputError& error) {
    EXPECT_TRUE(contains(error.what(), (blocker / "logs").string())) << error.what();
  }
}

TEST(RunLogWriter, OwnsRunFiles) {
  const TemporaryDirectory dir;
  const auto log_dir = dir / "logs";
  memory::RunLogWriter writer(log_dir, "run-1");
  EXPECT_EQ(writer.events_path(), log_dir / "run-1.events.jsonl");
  EXPECT_EQ(writer.timeline_path(), log_dir / "run-1.timeline.svg");
  EXPECT_EQ(writer.markdown_path(), log_dir / "memory_log.md");

  writer.events().record(memory::EventType::load, {{"strategy", "fp16_full"}});
  writer.events().record(memory::EventType::stage_peak, {{"stage", "denoising"}});
  const std::vector<std::string> lines = split_lines(read_file(writer.events_path()));
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(nlohmann::json::parse(lines[1])["stage"], "denoising");

  const std::vector<memory::TimelineMark> marks = memory::timeline_marks(writer.events().events());
  writer.write_timeline({{0.0, kMiB, 2 * kMiB, 3 * kMiB}, {1.0, 2 * kMiB, 2 * kMiB, 4 * kMiB}},
                        marks, std::nullopt, "run-1");
  EXPECT_TRUE(contains(read_file(writer.timeline_path()), "stage_peak: denoising"));

  writer.append_entry(sample_load_entry());
  EXPECT_TRUE(contains(read_file(writer.markdown_path()), "## Memory Management Log Entry"));
}

TEST(RunLogWriter, RejectsRunIdsThatLeaveDirectory) {
  const TemporaryDirectory dir;
  for (const std::string run_id : {"", "../escape", ".hidden", "a/b", "with space"}) {
    EXPECT_THROW(memory::RunLogWriter(dir.path(), run_id), InvalidInputError) << run_id;
  }
}

TEST(RunLogWriter, NewRunIdsAreUniqueAndValid) {
  const TemporaryDirectory dir;
  const std::string first = memory::new_run_id();
  const std::string second = memory::new_run_id();
  EXPECT_NE(first, second);
  EXPECT_NO_THROW(memory::RunLogWriter(dir.path(), first));
  EXPECT_TRUE(std::filesystem::exists(dir / (first + ".events.jsonl")));
}

TEST(TimelineMarks, SkipPlansAndLabelWithDetail) {
  const std::vector<memory::Event> events = {
      {0.1, memory::EventType::plan, {{"strategy", "fp16_full"}}},
      {0.5, memory::EventType::fallback, {{"strategy", "fp8_optimized"}}},
      {0.9, memory::EventType::stage_peak, {{"stage", "vae_decode"}, {"strategy", "x"}}},
      {1.2, memory::EventType::retry, {{"attempt", 2}}},
  };
  const std::vector<memory::TimelineMark> marks = memory::timeline_marks(events);
  ASSERT_EQ(marks.size(), 3u);
  EXPECT_EQ(marks[0].label, "fallback: fp8_optimized");
  EXPECT_DOUBLE_EQ(marks[0].t_s, 0.5);
  EXPECT_EQ(marks[1].label, "stage_peak: vae_decode");
  EXPECT_EQ(marks[2].label, "retry");
}

}  // namespace
}  // namespace ethereal::test
