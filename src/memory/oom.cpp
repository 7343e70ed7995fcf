#include "memory/oom.h"

#include <array>
#include <cctype>
#include <cerrno>
#include <new>
#include <string>
#include <system_error>

#include "runtime/device.h"
#include "runtime/error.h"

namespace ethereal::memory {

namespace {

struct MessagePattern {
  std::string_view text;  // lower case
  OomKind kind;
};

// Messages of libraries that name the failing tier themselves. Checked before the generic
// "out of memory".
constexpr std::array<MessagePattern, 8> kPatterns = {{
    {"cuda out of memory", OomKind::device},          // PyTorch-style CUDA allocators
    {"cuda_error_out_of_memory", OomKind::device},    // CUDA driver API
    {"cudaerrormemoryallocation", OomKind::device},   // CUDA runtime API
    {"cublas_status_alloc_failed", OomKind::device},  // cuBLAS
    {"dnnl_out_of_memory", OomKind::host},            // oneDNN status name
    {"std::bad_alloc", OomKind::host},                // a bad_alloc rewrapped as text
    {"cannot allocate memory", OomKind::host},        // strerror(ENOMEM): failed mmap, fork
    {"enomem", OomKind::host},
}};

std::string lower_case(std::string_view text) {
  std::string lower;
  lower.reserve(text.size());
  for (const char c : text) {
    lower.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  return lower;
}

OomKind classify_message(std::string_view message) {
  const std::string lower = lower_case(message);
  for (const MessagePattern& pattern : kPatterns) {
    if (lower.find(pattern.text) != std::string::npos) {
      return pattern.kind;
    }
  }
  if (lower.find("out of memory") == std::string::npos) {
    return OomKind::none;
  }
  for (const std::string_view device_word : {"cuda", "gpu", "device"}) {
    if (lower.find(device_word) != std::string::npos) {
      return OomKind::device;
    }
  }
  return OomKind::host;
}

OomKind classify_device(const std::string& device) {
  // The figures carry Device::str(): "cpu" for host memory, "cuda:N" for a GPU.
  return device == Device::cpu().str() ? OomKind::host : OomKind::device;
}

bool is_enomem(const std::error_code& code) {
  return code == std::errc::not_enough_memory;
}

}  // namespace

std::string_view oom_kind_name(OomKind kind) {
  switch (kind) {
    case OomKind::none: return "none";
    case OomKind::device: return "device";
    case OomKind::host: return "host";
  }
  return "none";
}

OomKind classify_oom(const std::exception& error) {
  if (const auto* oom = dynamic_cast<const OutOfMemoryError*>(&error)) {
    return classify_device(oom->figures().device);
  }
  if (dynamic_cast<const InvalidInputError*>(&error) != nullptr) {
    return OomKind::none;
  }
  if (dynamic_cast<const std::bad_alloc*>(&error) != nullptr) {
    return OomKind::host;
  }
  if (const auto* system = dynamic_cast<const std::system_error*>(&error);
      system != nullptr && is_enomem(system->code())) {
    return OomKind::host;
  }
  if (const OomKind kind = classify_message(error.what()); kind != OomKind::none) {
    return kind;
  }
  if (const auto* nested = dynamic_cast<const std::nested_exception*>(&error)) {
    return classify_oom(nested->nested_ptr());
  }
  return OomKind::none;
}

OomKind classify_oom(const std::exception_ptr& error) {
  if (!error) {
    return OomKind::none;
  }
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return classify_oom(e);
  } catch (...) {
    return OomKind::none;
  }
}

bool is_oom_error(const std::exception& error) {
  return classify_oom(error) != OomKind::none;
}

bool is_oom_error(const std::exception_ptr& error) {
  return classify_oom(error) != OomKind::none;
}

}  // namespace ethereal::memory
