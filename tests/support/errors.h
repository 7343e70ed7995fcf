// Capture of exception messages for tests of error paths.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "runtime/error.h"

namespace ethereal::test_support {

// Runs `action` and returns the message of the E it throws. When it throws nothing, records a
// test failure and returns "". Exceptions of other types propagate, so gtest reports them.
template <typename E = InvalidInputError, typename Action>
std::string error_message(Action&& action) {
  try {
    action();
  } catch (const E& error) {
    return error.what();
  }
  ADD_FAILURE() << "expected an exception, but none was thrown";
  return "";
}

}  // namespace ethereal::test_support
