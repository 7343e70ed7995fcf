// Typed errors of the library. Code inside libethereal throws these; the command-line program
// and the backend API catch them at the boundary and map them to exit statuses:
// InvalidInputError -> 2, OutOfMemoryError -> 3, anything else -> 1.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>

namespace ethereal {

// Base class of every error the library throws on purpose.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A file, option or value given by the user is invalid. The message names it and tells the
// user what to do.
class InvalidInputError : public Error {
 public:
  using Error::Error;
};

// Reading or writing a file failed for a reason outside the user's input (I/O error, full disk).
class IoError : public Error {
 public:
  using Error::Error;
};

// An allocator could not provide the requested bytes: a capacity refusal, a failed system
// allocation (std::bad_alloc, mmap) or an injected fault. All figures are in bytes.
class OutOfMemoryError : public Error {
 public:
  struct Figures {
    std::string device;
    std::size_t requested_bytes = 0;
    std::size_t allocated_bytes = 0;
    std::size_t reserved_bytes = 0;
    std::size_t capacity_bytes = 0;
    std::size_t free_bytes = 0;
  };

  OutOfMemoryError(Figures figures, const std::string& reason, const std::string& remedy);

  const Figures& figures() const { return figures_; }
  const std::string& reason() const { return reason_; }
  const std::string& remedy() const { return remedy_; }

 private:
  Figures figures_;
  std::string reason_;
  std::string remedy_;
};

}  // namespace ethereal
