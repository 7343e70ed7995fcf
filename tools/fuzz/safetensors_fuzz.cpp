// libFuzzer target for the safetensors header validator. README.md in this folder gives the
// build and run commands.
//
// Every input must either parse, with offsets that lie inside the input, or fail with
// InvalidInputError. Any other exception, crash or sanitizer report is a bug.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "io/safetensors_format.h"
#include "runtime/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  try {
    const ethereal::safetensors_format::Header header =
        ethereal::safetensors_format::parse_file(file, "fuzz-input");
    for (const ethereal::TensorInfo& tensor : header.tensors) {
      if (tensor.data_begin < header.data_offset || tensor.data_end > size ||
          tensor.data_begin > tensor.data_end) {
        std::abort();
      }
    }
  } catch (const ethereal::InvalidInputError&) {
    // A rejected input is the expected outcome for almost every mutation.
  }
  return 0;
}
