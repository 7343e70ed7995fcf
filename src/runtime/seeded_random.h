// Seeded random values for generated weights in tests, benchmarks and random checkpoints: the
// SplitMix64 generator and the FNV-1a hash of tensor names. SplitMix64 accepts any 64-bit state
// as a start, so a stream can be seeded from a tensor name and a row. Not for cryptography.
#pragma once

#include <cstdint>
#include <string_view>

namespace ethereal {

// Advances `state` by the golden-ratio increment and returns the next 64 random bits.
inline std::uint64_t splitmix64(std::uint64_t& state) {
  state += 0x9e3779b97f4a7c15ULL;
  std::uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// A value uniform in [low, high) from the top 24 bits of `bits`, the precision of a float.
inline float uniform_from_bits(std::uint64_t bits, float low, float high) {
  const auto top = static_cast<std::uint32_t>(bits >> 40);
  return low + (high - low) * (static_cast<float>(top) * (1.0f / 16777216.0f));
}

// The 64-bit FNV-1a hash of `text`, so a tensor's stream depends on its name and not on the
// order in which tensors are generated.
inline std::uint64_t fnv1a_hash(std::string_view text) {
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  for (char c : text) {
    hash = (hash ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  }
  return hash;
}

}  // namespace ethereal
