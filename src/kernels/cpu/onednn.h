// The one place where the library meets oneDNN (version 2.6 in Debian 12).
//
// Every oneDNN primitive here runs on one process-wide CPU engine. Streams are per thread:
// a oneDNN stream is not meant to be shared by threads that execute at the same time.
//
// Memory accounting: oneDNN never allocates the buffers it works on. Weights, temporaries
// and scratchpads are Tensors drawn from the current allocator (so allocator statistics and
// the dry-run planner see them), wrapped in dnnl::memory objects with a user handle, and every
// primitive is created with a user-managed scratchpad. In a dry run the same descriptors are
// created and the same tensors allocated, but nothing executes.
//
// Creating a primitive can take milliseconds (JIT compilation), so kernels keep created
// primitives in a PrimitiveCache keyed by shape and dtype. Keys also include thread_count():
// oneDNN sizes a primitive's work split and scratchpad for the thread count at creation.
#pragma once

#include <oneapi/dnnl/dnnl.hpp>

#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "runtime/tensor.h"

namespace ethereal::cpu {

// The process-wide CPU engine.
dnnl::engine& onednn_engine();
// The calling thread's in-order stream on onednn_engine().
dnnl::stream& onednn_stream();

// oneDNN data type of `dtype`; throws Error naming `kernel` for anything but f32 and bf16.
dnnl::memory::data_type onednn_data_type(DType dtype, std::string_view kernel);
dnnl::memory::dims onednn_dims(const Shape& shape);

// A plain descriptor with `tensor`'s shape and strides (in elements) and `dtype`
// (default: the tensor's own). Throws for dtypes other than f32 and bf16.
dnnl::memory::desc onednn_plain_desc(const Tensor& tensor, std::string_view kernel);
dnnl::memory::desc onednn_plain_desc(const Tensor& tensor, DType dtype, std::string_view kernel);

// A dnnl::memory over the bytes of `tensor` laid out as `desc` (default: its plain
// descriptor). The tensor must not be dry, and must cover desc.get_size() bytes.
dnnl::memory onednn_memory(const Tensor& tensor, std::string_view kernel);
dnnl::memory onednn_memory(const dnnl::memory::desc& desc, const Tensor& tensor);

// A uint8 tensor of desc.get_size() bytes from the current allocator (dry in a dry run).
Tensor empty_for_desc(const dnnl::memory::desc& desc);

// Allocates the scratchpad that `pd` requires as a uint8 tensor, or returns an undefined tensor
// when it requires none. `pd` must have been created with onednn_attr() (user-managed
// scratchpad).
Tensor empty_scratchpad(const dnnl::primitive_desc_base& pd);

// Primitive attributes with a user-managed scratchpad: the base of every primitive here.
dnnl::primitive_attr onednn_attr();

// Name of a blocked layout in oneDNN's tag spelling: outer dimensions from the largest
// stride to the smallest (upper case when the dimension is also blocked), then the inner
// blocks from outermost to innermost, e.g. "BA16a64b2a". Dimension 0 is "a".
std::string onednn_layout_name(const dnnl::memory::desc& desc);

// Executes `primitive` on the calling thread's stream and waits for it. Adds the scratchpad
// argument when `scratchpad` is defined.
void onednn_execute(const dnnl::primitive& primitive,
                    std::unordered_map<int, dnnl::memory> arguments, const Tensor& scratchpad);

// Copies `source` (any strides, f32 or bf16) into `destination` laid out as
// `destination_desc`, converting the dtype (to nearest even for bf16). Allocates the reorder's
// scratchpad when it requires one. With `execute` false (a dry run) it allocates the same
// tensors and skips the copy.
void onednn_reorder(const dnnl::memory::desc& source_desc, const Tensor& source,
                    const dnnl::memory::desc& destination_desc, const Tensor& destination,
                    bool execute);

// A contiguous copy of `source` converted to `dtype`, made with a oneDNN reorder (parallel
// and vectorised, unlike a strided Tensor::copy_from). Returns `source` itself when it is
// already contiguous with that dtype.
Tensor onednn_contiguous(const Tensor& source, DType dtype, std::string_view kernel);

// A bounded, thread-safe map from a key (shapes, dtypes, flags) to a created primitive and its
// descriptor. When full it clears all entries, which is rare because shapes repeat in a run.
template <typename Primitive>
class PrimitiveCache {
 public:
  struct Entry {
    typename Primitive::primitive_desc pd;
    Primitive primitive;
  };

  explicit PrimitiveCache(std::size_t capacity = 64) : capacity_(capacity) {}

  // Returns the entry for `key`, creating the primitive from `make_pd()` on a miss. The
  // returned pointer stays valid after the cache drops the entry.
  std::shared_ptr<const Entry> get(
      const std::string& key, const std::function<typename Primitive::primitive_desc()>& make_pd) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (auto found = entries_.find(key); found != entries_.end()) {
        return found->second;
      }
    }
    // Created outside the lock: JIT compilation may take milliseconds.
    auto pd = make_pd();
    auto entry = std::make_shared<const Entry>(Entry{pd, Primitive(pd)});
    std::lock_guard<std::mutex> lock(mutex_);
    if (entries_.size() >= capacity_) {
      entries_.clear();
    }
    entries_.emplace(key, entry);
    return entry;
  }

 private:
  std::size_t capacity_;
  std::mutex mutex_;
  std::unordered_map<std::string, std::shared_ptr<const Entry>> entries_;
};

}  // namespace ethereal::cpu
