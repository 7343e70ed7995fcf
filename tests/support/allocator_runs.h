// Allocator statistics of code run under a fresh allocator, for checks that a dry run
// allocates what a real run does.
#pragma once

#include <functional>

#include "runtime/allocator.h"

namespace ethereal::test_support {

// Allocator statistics of `body` run under a fresh CPU allocator, in dry-run mode or not.
AllocatorStats stats_of_run(bool dry_run, const std::function<void()>& body);

// Expects the same peaks, allocation count and current bytes in both runs, and at least one
// allocation.
void expect_same_statistics(const AllocatorStats& real, const AllocatorStats& dry);

}  // namespace ethereal::test_support
