// Runs the ethereal program built alongside the tests and captures its output.
#pragma once

#include <string>
#include <vector>

namespace ethereal::test {

struct CommandResult {
  int exit_status = -1;
  std::string standard_output;
  std::string standard_error;
};

// Runs ETHEREAL_BINARY with `arguments` (no shell involved) and optional extra environment
// entries "NAME=value".
CommandResult run_ethereal(const std::vector<std::string>& arguments,
                           const std::vector<std::string>& environment = {});

}  // namespace ethereal::test
