// Helpers shared by the memory tests.
#pragma once

#include <stdlib.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

#include "support/errors.h"
#include "support/files.h"

namespace ethereal::memory::testing {

using test_support::error_message;
using test_support::TemporaryDirectory;

// Sets an environment variable for the lifetime of the object and restores the old value.
class ScopedEnvironment {
 public:
  ScopedEnvironment(std::string name, const std::string& value) : name_(std::move(name)) {
    if (const char* old = std::getenv(name_.c_str())) {
      old_value_ = old;
    }
    ::setenv(name_.c_str(), value.c_str(), 1);
  }
  ~ScopedEnvironment() {
    if (old_value_) {
      ::setenv(name_.c_str(), old_value_->c_str(), 1);
    } else {
      ::unsetenv(name_.c_str());
    }
  }
  ScopedEnvironment(const ScopedEnvironment&) = delete;
  ScopedEnvironment& operator=(const ScopedEnvironment&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_value_;
};

}  // namespace ethereal::memory::testing
