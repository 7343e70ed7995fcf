// Strided tensors over reference-counted storage.
//
// A Tensor is a view: shape, strides (in elements), an element offset, a dtype and a shared
// Storage. Copying a Tensor copies the view, not the bytes. Storage either comes from the
// current allocator of its device (counted in its statistics) or wraps external memory such
// as a memory-mapped checkpoint, kept alive by an owner handle.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/allocator.h"
#include "runtime/device.h"
#include "runtime/dtype.h"

namespace ethereal {

using Shape = std::vector<std::int64_t>;

std::int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);  // "[2, 3, 4]"
Shape contiguous_strides(const Shape& shape);

// Bytes behind one or more tensors.
class Storage {
 public:
  // Draws `bytes` from the current allocator of `device`.
  static std::shared_ptr<Storage> allocate(std::size_t bytes, Device device);
  // Wraps memory owned elsewhere; `owner` keeps it alive (for example a file mapping).
  // Not counted by any allocator.
  static std::shared_ptr<Storage> wrap(void* data, std::size_t bytes, Device device,
                                       std::shared_ptr<const void> owner);

  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  // True for storage drawn from an allocator in dry-run mode: no bytes behind it.
  bool is_dry() const { return data_ == nullptr && bytes_ > 0; }
  bool is_external() const { return owner_ != nullptr; }

 private:
  Storage() = default;

  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  Device device_;
  Allocator* allocator_ = nullptr;  // set when drawn from an allocator
  Allocation allocation_;
  std::shared_ptr<const void> owner_;
};

class Tensor {
 public:
  Tensor() = default;  // undefined tensor

  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu());
  // A contiguous view over external memory.
  static Tensor from_blob(void* data, const Shape& shape, DType dtype,
                          std::shared_ptr<const void> owner, Device device = Device::cpu());
  // Copies `values` into a new f32 tensor and converts it to `dtype`.
  static Tensor from_floats(std::span<const float> values, const Shape& shape,
                            DType dtype = DType::f32);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  std::int64_t offset() const { return offset_; }
  std::int64_t dim() const { return static_cast<std::int64_t>(shape_.size()); }
  // Size along `axis`; negative axes count from the end.
  std::int64_t size(std::int64_t axis) const;
  std::int64_t stride(std::int64_t axis) const;
  std::int64_t numel() const { return shape_numel(shape_); }
  // Bytes of the elements this view covers if it were contiguous.
  std::size_t nbytes() const { return dtype_bytes(dtype_, static_cast<std::size_t>(numel())); }
  bool is_contiguous() const;
  // True when the storage has no bytes behind it (dry run): kernels must not touch data().
  bool is_dry() const { return storage_ && storage_->is_dry(); }
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  // Address of the first element. Throws for a dry tensor.
  void* data() const;
  template <typename T>
  T* data_as() const {
    return static_cast<T*>(data());
  }

  // Views (share storage). Negative axes count from the end.
  Tensor view(const Shape& shape) const;     // contiguous only; one -1 is inferred
  Tensor reshape(const Shape& shape) const;  // a view when possible, else a copy
  Tensor slice(std::int64_t axis, std::int64_t start, std::int64_t end,
               std::int64_t step = 1) const;
  Tensor narrow(std::int64_t axis, std::int64_t start, std::int64_t length) const;
  Tensor select(std::int64_t axis, std::int64_t index) const;
  Tensor permute(const std::vector<std::int64_t>& order) const;
  Tensor transpose(std::int64_t axis0, std::int64_t axis1) const;
  Tensor unsqueeze(std::int64_t axis) const;
  Tensor squeeze(std::int64_t axis) const;

  // Copies (new storage from the current allocator).
  Tensor contiguous() const;  // returns *this when already contiguous
  Tensor clone() const;
  Tensor to(DType dtype) const;  // returns *this when the dtype already matches
  // Copies `source` into this tensor: same shape, any strides, any dtype.
  void copy_from(const Tensor& source);

  // Reads the elements in logical order as f32 (for tests and small tensors).
  std::vector<float> to_floats() const;

  std::string describe() const;  // "bf16[2, 3] cpu"

 private:
  std::shared_ptr<Storage> storage_;
  Shape shape_;
  Shape strides_;
  std::int64_t offset_ = 0;  // in elements
  DType dtype_ = DType::f32;
  Device device_;

  std::int64_t normalize_axis(std::int64_t axis, std::int64_t rank) const;
};

// Visits the storage offset (in elements) of every element of a strided view, in logical
// row-major order.
void for_each_offset(const Shape& shape, const Shape& strides, std::int64_t base,
                     const std::function<void(std::int64_t)>& visit);

}  // namespace ethereal
