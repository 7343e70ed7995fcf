// Helpers shared by the memory manager tests: the tiny model written once per test program,
// small requests, and a fresh real allocator per test.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "io/image.h"
#include "io/model_directory.h"
#include "memory/events.h"
#include "memory/manager.h"
#include "memory/planner.h"
#include "memory/strategy.h"
#include "models/tiny_model.h"
#include "pipeline/edit_pipeline.h"
#include "runtime/allocator.h"
#include "runtime/parallel.h"
#include "support/files.h"
#include "support/images.h"

namespace ethereal::manager_test {

namespace fs = std::filesystem;

// Runs the kernels of every manager test on one thread. CTest runs two test programs side by
// side on a two-core CI machine, and with two OpenMP threads each, a thread waiting at a barrier
// spins while its partner waits for a core. On a two-core host shared with compiles, managed
// 64x64 edits of the tiny model (default reference size) took 0.7 s of CPU time each on one
// thread and 1.2 to 3.7 s on two, and up to six times the wall time. The thread count changes no
// memory behaviour that these tests check: no parallel loop allocates from the allocators, and
// plans and runs in one program use the same count.
class SingleKernelThreadEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { set_thread_count(1); }
};

inline ::testing::Environment* const kSingleKernelThread =
    ::testing::AddGlobalTestEnvironment(new SingleKernelThreadEnvironment);

using test_support::TemporaryDirectory;

// The tiny model, written with seed 7 into a temporary folder on first use and removed when
// the test program exits. It is written with an allocator of its own, so a first use under a
// dry-run or capped allocator works too.
inline const fs::path& tiny_model_path() {
  static TemporaryDirectory* folder = [] {
    auto* created = new TemporaryDirectory();
    CpuCachingAllocator allocator;
    const ScopedAllocator scope(allocator);
    write_tiny_model(created->path() / "model", 7);
    std::atexit([] { delete folder; });
    return created;
  }();
  static const fs::path path = folder->path() / "model";
  return path;
}

inline ModelDirectory tiny_model() {
  return ModelDirectory::open(tiny_model_path());
}

// The size of the input image of every manager test, a test_support::gradient_image. The pipeline
// scales every input to about 1024x1024 pixels for the VAE, so the input size barely changes the
// cost of an edit. The output size sets the target tokens.
inline constexpr int kInputWidth = 48;
inline constexpr int kInputHeight = 40;

// A plan request for one kInputWidth x kInputHeight input, `width` x `height` output, two steps
// and CFG 1 (one transformer pass per step, which halves the denoising time of the tests).
inline memory::PlanRequest small_plan_request(int width, int height) {
  memory::PlanRequest request;
  request.image_sizes = {{kInputWidth, kInputHeight}};
  request.output_size = ImageSize{width, height};
  request.steps = 2;
  request.cfg_scale = 1.0;
  request.prompt = "make the sky green";
  return request;
}

// An edit of the tiny model matching small_plan_request: one kInputWidth x kInputHeight
// gradient input, `output` size, two steps, CFG 1 and `seed`.
inline memory::ManagedEditRequest small_edit_request(ImageSize output, std::uint64_t seed) {
  memory::ManagedEditRequest request;
  request.model_label = "tiny";
  request.edit.images = {test_support::gradient_image(kInputWidth, kInputHeight)};
  request.edit.prompt = "make the sky green";
  request.edit.steps = 2;
  request.edit.cfg_scale = 1.0;
  request.edit.seed = seed;
  request.edit.output_size = output;
  return request;
}

// A configuration without safety margin (the budget is the capacity) that ranks strategies by
// the preference order (performance mode).
inline memory::MemoryConfig performance_config(bool allow_resolution_reduction) {
  memory::MemoryConfig config;
  config.memory_threshold_mb = 0;
  config.allow_resolution_reduction = allow_resolution_reduction;
  config.mode = memory::Mode::performance;
  return config;
}

// A budget without limits, so every plan fits.
inline memory::TierBudget unlimited_budget() {
  return {
      .device_bytes = kUnlimitedCapacity, .host_bytes = kUnlimitedCapacity, .device_is_host = true};
}

// The types of `events`, in order, without plan and stage_peak events.
inline std::vector<std::string> decision_events(const std::vector<memory::Event>& events) {
  std::vector<std::string> types;
  for (const memory::Event& event : events) {
    if (event.type == memory::EventType::plan || event.type == memory::EventType::stage_peak) {
      continue;
    }
    types.emplace_back(memory::event_type_name(event.type));
  }
  return types;
}

// A CPU machine whose engine may reserve `capacity` bytes (--memory-limit).
inline memory::HardwareAssessment machine_with_limit(std::uint64_t capacity) {
  memory::HardwareAssessment hardware = memory::describe_machine(capacity, capacity);
  hardware.memory_limit_bytes = capacity;
  return hardware;
}

// The resolution_reduction events of `events` as "FROM_WIDTH -> TO_WIDTH", in order.
inline std::vector<std::string> resolution_reductions(const memory::EventLog& events) {
  std::vector<std::string> reductions;
  for (const memory::Event& event : events.events()) {
    if (event.type == memory::EventType::resolution_reduction) {
      reductions.push_back(std::to_string(event.fields.at("from_width").get<int>()) + " -> " +
                           std::to_string(event.fields.at("to_width").get<int>()));
    }
  }
  return reductions;
}

}  // namespace ethereal::manager_test
