#include "memory/events.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "memory_log/test_files.h"
#include "runtime/error.h"

namespace ethereal::test {
namespace {

using memory::Event;
using memory::EventLog;
using memory::EventType;

constexpr EventType kAllTypes[] = {
    EventType::plan,      EventType::load,
    EventType::onload,    EventType::offload,
    EventType::fallback,  EventType::out_of_memory,
    EventType::retry,     EventType::stage_peak,
    EventType::threshold, EventType::resolution_reduction,
    EventType::edit,
};

TEST(EventType, NamesRoundTrip) {
  for (const EventType type : kAllTypes) {
    const std::string_view name = memory::event_type_name(type);
    EXPECT_FALSE(name.empty());
    ASSERT_TRUE(memory::parse_event_type(name).has_value()) << name;
    EXPECT_EQ(*memory::parse_event_type(name), type) << name;
  }
  EXPECT_EQ(memory::event_type_name(EventType::out_of_memory), "out_of_memory");
  EXPECT_EQ(memory::event_type_name(EventType::resolution_reduction), "resolution_reduction");
  EXPECT_FALSE(memory::parse_event_type("oom").has_value());
}

TEST(EventLog, RecordsInOrderWithFields) {
  EventLog log;
  log.record(EventType::plan, {{"strategy", "fp16_full"}, {"peak_device_bytes", 1024}});
  log.record(EventType::fallback, {{"from", "fp16_full"}, {"to", "fp8_optimized"}});
  log.record(EventType::edit);

  const std::vector<Event> events = log.events();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].type, EventType::plan);
  EXPECT_EQ(events[0].fields["peak_device_bytes"], 1024);
  EXPECT_EQ(events[1].fields["to"], "fp8_optimized");
  EXPECT_TRUE(events[2].fields.is_object());
  EXPECT_TRUE(events[2].fields.empty());
  EXPECT_GE(events[0].time_s, 0.0);
  EXPECT_LE(events[0].time_s, events[1].time_s);
  EXPECT_LE(events[1].time_s, events[2].time_s);
}

TEST(EventLog, RejectsReservedAndNonObjectFields) {
  EventLog log;
  EXPECT_THROW(log.record(EventType::load, {{"type", "x"}}), std::invalid_argument);
  EXPECT_THROW(log.record(EventType::load, {{"time_s", 1.0}}), std::invalid_argument);
  EXPECT_THROW(log.record(EventType::load, nlohmann::json::array({1, 2})), std::invalid_argument);
  EXPECT_THROW(log.record(EventType::load, nlohmann::json(3)), std::invalid_argument);
  EXPECT_TRUE(log.events().empty());
}

TEST(EventLog, JsonlLineLeadsWithTimeAndType) {
  const Event event{1.5, EventType::stage_peak, {{"stage", "vae_decode"}, {"peak_bytes", 7}}};
  const std::string line = memory::to_jsonl_line(event);
  EXPECT_EQ(line.rfind(R"({"time_s":1.5,"type":"stage_peak",)", 0), 0u) << line;
  ASSERT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n');
  const nlohmann::json parsed = nlohmann::json::parse(line);
  EXPECT_EQ(parsed["stage"], "vae_decode");
  EXPECT_EQ(parsed["peak_bytes"], 7);
}

TEST(EventLog, JsonlFileHasOneCompleteLinePerEvent) {
  const TemporaryDirectory dir;
  const auto path = dir / "run.events.jsonl";
  EventLog log;
  log.record(EventType::plan, {{"strategy", "nf4_quantized"}});  // before the sink opens
  log.open_jsonl(path);
  EXPECT_EQ(log.jsonl_path(), path);

  constexpr int kThreads = 4;
  constexpr int kEventsPerThread = 50;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&log, t] {
      for (int i = 0; i < kEventsPerThread; ++i) {
        log.record(EventType::onload,
                   {{"thread", t}, {"block", i}, {"text", "line\nbreak \"quoted\""}});
      }
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  log.close_jsonl();

  const std::string text = read_file(path);
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n');
  const std::vector<std::string> lines = split_lines(text);
  ASSERT_EQ(lines.size(), 1u + kThreads * kEventsPerThread);

  const nlohmann::json first = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(first["type"], "plan");
  EXPECT_EQ(first["strategy"], "nf4_quantized");

  double previous_time = -1.0;
  for (const std::string& line : lines) {
    const nlohmann::json parsed = nlohmann::json::parse(line);  // throws on a partial line
    ASSERT_TRUE(parsed.contains("time_s")) << line;
    ASSERT_TRUE(parsed.contains("type")) << line;
    EXPECT_GE(parsed["time_s"].get<double>(), previous_time) << line;
    previous_time = parsed["time_s"].get<double>();
  }
  EXPECT_EQ(nlohmann::json::parse(lines[1])["text"], "line\nbreak \"quoted\"");
}

TEST(EventLog, KilledProcessLeavesCompleteLines) {
  const TemporaryDirectory dir;
  const auto path = dir / "killed.events.jsonl";
  constexpr int kEvents = 300;
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    EventLog log;
    log.open_jsonl(path);
    for (int i = 0; i < kEvents; ++i) {
      log.record(EventType::offload, {{"block", i}});
    }
    ::raise(SIGKILL);  // no destructor runs, so nothing is flushed at exit
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGKILL);

  const std::vector<std::string> lines = split_lines(read_file(path));
  ASSERT_EQ(lines.size(), static_cast<std::size_t>(kEvents));
  for (int i = 0; i < kEvents; ++i) {
    const nlohmann::json parsed = nlohmann::json::parse(lines[i]);
    EXPECT_EQ(parsed["type"], "offload");
    EXPECT_EQ(parsed["block"], i);
  }
}

TEST(EventLog, OpenInMissingDirectoryNamesFile) {
  const TemporaryDirectory dir;
  const auto path = dir / "missing" / "run.events.jsonl";
  EventLog log;
  try {
    log.open_jsonl(path);
    FAIL() << "expected InvalidInputError";
  } catch (const InvalidInputError& error) {
    EXPECT_NE(std::string(error.what()).find(path.string()), std::string::npos) << error.what();
  }
}

TEST(EventLog, FailedWriteKeepsEventsInMemory) {
  // Every write to /dev/full fails with ENOSPC.
  if (::access("/dev/full", W_OK) != 0) {
    GTEST_SKIP() << "/dev/full is not writable here";
  }
  EventLog log;
  log.open_jsonl("/dev/full");
  log.record(EventType::out_of_memory, {{"requested_bytes", 4096}});
  log.record(EventType::retry);
  EXPECT_NE(log.sink_error().find("/dev/full"), std::string::npos) << log.sink_error();
  EXPECT_TRUE(log.jsonl_path().empty());
  EXPECT_EQ(log.events().size(), 2u);
}

}  // namespace
}  // namespace ethereal::test
