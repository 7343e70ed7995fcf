// File helpers shared by the memory log tests.
#pragma once

#include <sstream>
#include <string>
#include <vector>

#include "support/files.h"

namespace ethereal::test {

using test_support::read_file;
using test_support::TemporaryDirectory;

// The lines of `text` without their line ends.
inline std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    lines.push_back(line);
  }
  return lines;
}

}  // namespace ethereal::test
