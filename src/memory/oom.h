// Recognising out-of-memory failures among the exceptions a load or an edit can raise, and
// the tier that ran out.
//
// Our allocators raise OutOfMemoryError, but code below them (the C++ runtime, system calls,
// oneDNN, CUDA libraries) reports exhaustion in its own way. classify_oom recognises, in this
// order:
//   - OutOfMemoryError: device tier for a GPU device ("cuda:N"), host tier for "cpu";
//   - InvalidInputError: never out of memory, whatever its message contains, because it
//     describes the user's input;
//   - std::bad_alloc: host;
//   - std::system_error with code ENOMEM: host;
//   - any other exception by its message, case-insensitively: "CUDA out of memory",
//     "CUDA_ERROR_OUT_OF_MEMORY", "cudaErrorMemoryAllocation", "CUBLAS_STATUS_ALLOC_FAILED"
//     (device); "dnnl_out_of_memory", "std::bad_alloc", "Cannot allocate memory" (the strerror
//     text of ENOMEM, as in a failed mmap), the word "ENOMEM" (host); "out of memory" (device
//     when the message also mentions CUDA, GPU or device, host otherwise);
//   - the nested exception of a std::nested_exception, when the outer one matched nothing.
#pragma once

#include <exception>
#include <string_view>

namespace ethereal::memory {

enum class OomKind { none, device, host };

// "none", "device" or "host".
std::string_view oom_kind_name(OomKind kind);

OomKind classify_oom(const std::exception& error);
// OomKind::none for a null pointer or an exception not derived from std::exception.
OomKind classify_oom(const std::exception_ptr& error);

bool is_oom_error(const std::exception& error);
bool is_oom_error(const std::exception_ptr& error);

}  // namespace ethereal::memory
