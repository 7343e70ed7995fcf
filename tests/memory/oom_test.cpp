#include "memory/oom.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "runtime/allocator.h"
#include "runtime/error.h"

namespace ethereal::memory {
namespace {

OutOfMemoryError oom_on(const std::string& device) {
  OutOfMemoryError::Figures figures;
  figures.device = device;
  figures.requested_bytes = 64 << 20;
  return OutOfMemoryError(figures, "the request exceeds the allocator's capacity", "");
}

TEST(ClassifyOom, OutOfMemoryErrorByDevice) {
  EXPECT_EQ(classify_oom(oom_on("cpu")), OomKind::host);
  EXPECT_EQ(classify_oom(oom_on("cuda:0")), OomKind::device);
  EXPECT_EQ(classify_oom(oom_on("cuda:3")), OomKind::device);
}

TEST(ClassifyOom, AllocatorCapacityRefusal) {
  CpuCachingAllocator allocator(CpuCachingAllocator::Options{.capacity = 1 << 20});
  try {
    allocator.allocate(8 << 20);
    FAIL() << "the allocation above the capacity succeeded";
  } catch (const std::exception& e) {
    EXPECT_EQ(classify_oom(e), OomKind::host);
    EXPECT_TRUE(is_oom_error(e));
  }
}

TEST(ClassifyOom, StandardLibraryErrors) {
  EXPECT_EQ(classify_oom(std::bad_alloc()), OomKind::host);
  EXPECT_EQ(classify_oom(std::bad_array_new_length()), OomKind::host);
  EXPECT_EQ(classify_oom(std::system_error(ENOMEM, std::generic_category(), "mmap")),
            OomKind::host);
  EXPECT_EQ(classify_oom(std::system_error(ENOMEM, std::system_category(), "fork")), OomKind::host);
  EXPECT_EQ(classify_oom(std::system_error(ENOENT, std::generic_category(), "open")),
            OomKind::none);
}

TEST(ClassifyOom, FailedMapping) {
  EXPECT_EQ(classify_oom(IoError("mapping weights.safetensors failed: Cannot allocate memory")),
            OomKind::host);
  EXPECT_EQ(classify_oom(IoError("mmap of model.safetensors returned ENOMEM")), OomKind::host);
  EXPECT_EQ(classify_oom(IoError("mapping weights.safetensors failed: Permission denied")),
            OomKind::none);
}

TEST(ClassifyOom, LibraryMessages) {
  const std::vector<std::pair<std::string, OomKind>> cases = {
      {"CUDA out of memory. Tried to allocate 2.00 GiB", OomKind::device},
      {"cuda OUT OF MEMORY", OomKind::device},
      {"CUDA driver error: CUDA_ERROR_OUT_OF_MEMORY", OomKind::device},
      {"cudaMalloc failed: cudaErrorMemoryAllocation", OomKind::device},
      {"cuBLAS error: CUBLAS_STATUS_ALLOC_FAILED", OomKind::device},
      {"GPU out of memory while packing weights", OomKind::device},
      {"device out of memory", OomKind::device},
      {"oneDNN primitive creation failed: dnnl_out_of_memory", OomKind::host},
      {"oneDNN: out of memory", OomKind::host},
      {"caught std::bad_alloc while decoding", OomKind::host},
      {"Out of memory", OomKind::host},
      {"tensor shape mismatch", OomKind::none},
      {"memory mapping failed: invalid argument", OomKind::none},
  };
  for (const auto& [message, expected] : cases) {
    EXPECT_EQ(classify_oom(std::runtime_error(message)), expected) << message;
  }
}

TEST(ClassifyOom, InvalidInputIsNeverOom) {
  EXPECT_EQ(classify_oom(InvalidInputError("--memory-limit 1MiB: out of memory at once")),
            OomKind::none);
}

TEST(ClassifyOom, NestedException) {
  try {
    try {
      throw std::bad_alloc();
    } catch (...) {
      std::throw_with_nested(std::runtime_error("loading the transformer failed"));
    }
  } catch (const std::exception& e) {
    EXPECT_EQ(classify_oom(e), OomKind::host);
  }
}

TEST(ClassifyOom, ExceptionPointer) {
  EXPECT_EQ(classify_oom(std::exception_ptr()), OomKind::none);
  EXPECT_EQ(classify_oom(std::make_exception_ptr(oom_on("cuda:0"))), OomKind::device);
  EXPECT_EQ(classify_oom(std::make_exception_ptr(std::bad_alloc())), OomKind::host);
  EXPECT_EQ(classify_oom(std::make_exception_ptr(42)), OomKind::none);
  EXPECT_TRUE(is_oom_error(std::make_exception_ptr(std::runtime_error("CUDA out of memory"))));
  EXPECT_FALSE(is_oom_error(std::make_exception_ptr(std::runtime_error("shape mismatch"))));
}

TEST(ClassifyOom, KindNames) {
  EXPECT_EQ(oom_kind_name(OomKind::none), "none");
  EXPECT_EQ(oom_kind_name(OomKind::device), "device");
  EXPECT_EQ(oom_kind_name(OomKind::host), "host");
}

}  // namespace
}  // namespace ethereal::memory
