#include "runtime/device.h"

#include <charconv>

#include "runtime/error.h"

namespace ethereal {

std::string Device::str() const {
  return type == DeviceType::cpu ? std::string("cpu") : "cuda:" + std::to_string(index);
}

Device parse_device(std::string_view text) {
  if (text == "cpu") {
    return Device::cpu();
  }
  if (text == "cuda") {
    return Device::cuda(0);
  }
  constexpr std::string_view kCudaPrefix = "cuda:";
  if (text.starts_with(kCudaPrefix)) {
    std::string_view digits = text.substr(kCudaPrefix.size());
    int index = -1;
    auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    if (error == std::errc() && end == digits.data() + digits.size() && index >= 0) {
      return Device::cuda(index);
    }
  }
  throw InvalidInputError("invalid device \"" + std::string(text) +
                          "\": expected cpu, cuda or cuda:N with N a device index");
}

}  // namespace ethereal
