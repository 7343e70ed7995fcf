// Helpers shared by the tests of the vectorised kernels (norms, activations, element-wise,
// rotary embeddings, attention): seeded inputs, element-wise comparison with tolerances, and a
// check that a dry run allocates exactly what a real run does.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "runtime/allocator.h"
#include "runtime/dtype.h"
#include "runtime/error.h"
#include "runtime/tensor.h"
#include "support/inputs.h"
#include "support/tensor_compare.h"

namespace ethereal::cpu::vector_testing {

using test_support::expect_near_all;
using test_support::uniform_tensor;
using test_support::uniform_values;

// Relative precision of one rounding to `dtype` (half a unit in the last place).
inline double rounding_error(DType dtype) {
  return dtype == DType::bf16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -24);
}

// Allocator statistics and output shape of one run of `body` under a fresh allocator.
struct RunRecord {
  AllocatorStats stats;
  Shape output_shape;
  bool output_dry = false;
};

// Runs `body` (which creates its inputs and calls the kernel) under a fresh CPU allocator in
// real or dry-run mode.
inline RunRecord record_run(const std::function<Tensor()>& body, bool dry_run) {
  CpuCachingAllocator::Options options;
  options.dry_run = dry_run;
  CpuCachingAllocator allocator(options);
  RunRecord record;
  {
    ScopedAllocator scope(allocator);
    const Tensor output = body();
    record.output_shape = output.shape();
    record.output_dry = output.is_dry();
  }
  record.stats = allocator.stats();
  return record;
}

// Expects a dry run of `body` to allocate exactly what a real run allocates, return the same
// output shape, and return an output without data.
inline void expect_dry_run_matches(const std::function<Tensor()>& body, const std::string& label) {
  const RunRecord real = record_run(body, false);
  const RunRecord dry = record_run(body, true);
  EXPECT_EQ(dry.output_shape, real.output_shape) << label;
  EXPECT_TRUE(dry.output_dry) << label;
  EXPECT_FALSE(real.output_dry) << label;
  EXPECT_EQ(dry.stats.allocation_count, real.stats.allocation_count) << label;
  EXPECT_EQ(dry.stats.requested_bytes.peak, real.stats.requested_bytes.peak) << label;
  EXPECT_EQ(dry.stats.allocated_bytes.peak, real.stats.allocated_bytes.peak) << label;
  EXPECT_EQ(dry.stats.reserved_bytes.peak, real.stats.reserved_bytes.peak) << label;
  EXPECT_EQ(dry.stats.cache_hits, real.stats.cache_hits) << label;
}

// Expects `body` to throw ethereal::Error whose message contains every one of `fragments`.
template <typename Body>
void expect_error_containing(Body&& body, const std::vector<std::string>& fragments) {
  try {
    body();
    ADD_FAILURE() << "expected an ethereal::Error";
  } catch (const Error& error) {
    const std::string message = error.what();
    for (const std::string& fragment : fragments) {
      EXPECT_NE(message.find(fragment), std::string::npos)
          << "message \"" << message << "\" lacks \"" << fragment << "\"";
    }
  }
}

}  // namespace ethereal::cpu::vector_testing
