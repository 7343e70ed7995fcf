// Width and height of an image in pixels, and the rounding rule that the reference Python
// pipelines use when they compute sizes.
#pragma once

#include <cmath>
#include <cstdint>

namespace ethereal {

struct ImageSize {
  int width = 0;
  int height = 0;

  friend bool operator==(const ImageSize&, const ImageSize&) = default;
};

// Python's round(): to nearest, ties to even (the default floating-point rounding mode).
inline std::int64_t round_half_even(double value) {
  return static_cast<std::int64_t>(std::nearbyint(value));
}

}  // namespace ethereal
