// Helpers shared by the placement tests: a thread-safe recorder of residency events and a
// temporary directory.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/residency.h"

namespace ethereal::placement_test {

// Records events from any thread. A hook, when set, runs on the emitting thread after the
// event is stored (outside the lock), so it may wait for events from other threads.
class EventRecorder {
 public:
  ResidencyEventSink sink() {
    return [this](const ResidencyEvent& event) {
      {
        std::lock_guard lock(mutex_);
        events_.push_back(event);
      }
      changed_.notify_all();
      if (hook_) {
        hook_(event);
      }
    };
  }

  void set_hook(std::function<void(const ResidencyEvent&)> hook) { hook_ = std::move(hook); }

  std::vector<ResidencyEvent> events() const {
    std::lock_guard lock(mutex_);
    return events_;
  }

  void clear() {
    std::lock_guard lock(mutex_);
    events_.clear();
  }

  // Waits up to `timeout` until an event satisfies `predicate`; returns whether one did.
  bool wait_for(const std::function<bool(const ResidencyEvent&)>& predicate,
                std::chrono::milliseconds timeout) {
    return wait_until(
        [&](const std::vector<ResidencyEvent>& events) {
          return std::any_of(events.begin(), events.end(), predicate);
        },
        timeout);
  }

  // Waits up to `timeout` until `predicate` holds for the events so far; returns whether it
  // did. The predicate runs under the recorder's lock, so it must not call the recorder.
  bool wait_until(const std::function<bool(const std::vector<ResidencyEvent>&)>& predicate,
                  std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return predicate(events_); });
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<ResidencyEvent> events_;
  std::function<void(const ResidencyEvent&)> hook_;
};

// Events of one group, in the order they were recorded.
inline std::vector<ResidencyEvent> events_of(const std::vector<ResidencyEvent>& events,
                                             const std::string& group) {
  std::vector<ResidencyEvent> selected;
  for (const ResidencyEvent& event : events) {
    if (event.group == group) {
      selected.push_back(event);
    }
  }
  return selected;
}

// Maximum count of `group` on the device at once: onload_start adds one, offload removes one.
inline int max_on_device(const std::vector<ResidencyEvent>& events, const std::string& group) {
  int current = 0;
  int highest = 0;
  for (const ResidencyEvent& event : events_of(events, group)) {
    if (event.kind == ResidencyEventKind::onload_start) {
      highest = std::max(highest, ++current);
    } else if (event.kind == ResidencyEventKind::offload) {
      --current;
    }
  }
  return highest;
}

// A fresh directory under ::testing::TempDir(), removed with its contents at scope exit.
class TemporaryDirectory {
 public:
  TemporaryDirectory() {
    std::string pattern =
        (std::filesystem::path(::testing::TempDir()) / "ethereal-placement-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error("mkdtemp failed for " + pattern);
    }
    path_ = pattern;
  }
  ~TemporaryDirectory() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TemporaryDirectory(const TemporaryDirectory&) = delete;
  TemporaryDirectory& operator=(const TemporaryDirectory&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

}  // namespace ethereal::placement_test
