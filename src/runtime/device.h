// The device that kernels run on. Callers pass a Device value around, and only the runtime
// looks inside.
#pragma once

#include <string>
#include <string_view>

namespace ethereal {

enum class DeviceType { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static Device cpu() { return {DeviceType::cpu, 0}; }
  static Device cuda(int index) { return {DeviceType::cuda, index}; }

  bool is_cpu() const { return type == DeviceType::cpu; }
  // "cpu" or "cuda:N".
  std::string str() const;

  friend bool operator==(const Device&, const Device&) = default;
};

// Parses "cpu", "cuda" (index 0) or "cuda:N"; throws InvalidInputError naming the value.
Device parse_device(std::string_view text);

}  // namespace ethereal
