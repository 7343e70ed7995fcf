#include "runtime/error.h"

#include <fmt/format.h>

#include "runtime/allocator.h"

namespace ethereal {

namespace {

std::string format_capacity(std::size_t bytes) {
  return bytes == kUnlimitedCapacity ? std::string("unlimited") : format_mib(bytes);
}

std::string describe_oom(const OutOfMemoryError::Figures& f, const std::string& reason,
                         const std::string& remedy) {
  std::string message = fmt::format(
      "out of memory on {}: {}; requested {}, allocated {}, reserved {}, capacity {}, free {}",
      f.device, reason, format_mib(f.requested_bytes), format_mib(f.allocated_bytes),
      format_mib(f.reserved_bytes), format_capacity(f.capacity_bytes), format_mib(f.free_bytes));
  if (!remedy.empty()) {
    message += ". " + remedy;
  }
  return message;
}

}  // namespace

OutOfMemoryError::OutOfMemoryError(Figures figures, const std::string& reason,
                                   const std::string& remedy)
    : Error(describe_oom(figures, reason, remedy)),
      figures_(std::move(figures)),
      reason_(reason),
      remedy_(remedy) {}

}  // namespace ethereal
