#include "memory/paths.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
#include <string>

namespace ethereal::test {
namespace {

// Sets an environment variable for one scope and restores the previous value afterwards.
class ScopedEnvironment {
 public:
  ScopedEnvironment(const char* name, const char* value) : name_(name) {
    if (const char* previous = std::getenv(name)) {
      previous_ = previous;
    }
    if (value != nullptr) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnvironment() {
    if (previous_) {
      ::setenv(name_, previous_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnvironment(const ScopedEnvironment&) = delete;
  ScopedEnvironment& operator=(const ScopedEnvironment&) = delete;

 private:
  const char* name_;
  std::optional<std::string> previous_;
};

TEST(DefaultPaths, FollowXdgCacheHome) {
  const ScopedEnvironment cache("XDG_CACHE_HOME", "/var/cache/someone");
  EXPECT_EQ(memory::default_history_path(), "/var/cache/someone/ethereal/history.sqlite");
  EXPECT_EQ(memory::default_log_dir(), "/var/cache/someone/ethereal/logs");
}

TEST(DefaultPaths, FallBackToHomeCache) {
  const ScopedEnvironment home("HOME", "/home/someone");
  const ScopedEnvironment unset("XDG_CACHE_HOME", nullptr);
  EXPECT_EQ(memory::default_history_path(), "/home/someone/.cache/ethereal/history.sqlite");
  EXPECT_EQ(memory::default_log_dir(), "/home/someone/.cache/ethereal/logs");
}

TEST(DefaultPaths, IgnoreRelativeXdgCacheHome) {
  const ScopedEnvironment home("HOME", "/home/someone");
  const ScopedEnvironment relative("XDG_CACHE_HOME", "relative/cache");
  EXPECT_EQ(memory::default_history_path(), "/home/someone/.cache/ethereal/history.sqlite");
}

}  // namespace
}  // namespace ethereal::test
