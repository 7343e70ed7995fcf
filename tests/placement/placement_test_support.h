// Helpers shared by the placement tests: a thread-safe recorder of residency events and a
// temporary directory.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/residency.h"
#include "support/files.h"

namespace ethereal::placement_test {

using test_support::TemporaryDirectory;

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

}  // namespace ethereal::placement_test
