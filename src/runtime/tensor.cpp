#include "runtime/tensor.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include <fmt/format.h>

#include "runtime/error.h"
#include "runtime/parallel.h"

namespace ethereal {

std::int64_t shape_numel(const Shape& shape) {
  std::int64_t count = 1;
  for (std::int64_t extent : shape) {
    count *= extent;
  }
  return count;
}

std::string shape_str(const Shape& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  std::int64_t stride = 1;
  for (std::size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= std::max<std::int64_t>(shape[i], 1);
  }
  return strides;
}

// Storage.

std::shared_ptr<Storage> Storage::allocate(std::size_t bytes, Device device) {
  Allocator& allocator = current_allocator(device);
  std::shared_ptr<Storage> storage(new Storage());
  storage->allocation_ = allocator.allocate(bytes);
  storage->allocator_ = &allocator;
  storage->data_ = storage->allocation_.address;
  storage->bytes_ = bytes;
  storage->device_ = device;
  return storage;
}

std::shared_ptr<Storage> Storage::wrap(void* data, std::size_t bytes, Device device,
                                       std::shared_ptr<const void> owner) {
  std::shared_ptr<Storage> storage(new Storage());
  storage->data_ = data;
  storage->bytes_ = bytes;
  storage->device_ = device;
  storage->owner_ = owner ? std::move(owner) : std::make_shared<int>(0);
  return storage;
}

Storage::~Storage() {
  if (allocator_ != nullptr) {
    allocator_->deallocate(allocation_);
  }
}

// Tensor construction.

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (std::int64_t extent : shape) {
    if (extent < 0) {
      throw InvalidInputError("Tensor::empty: negative extent in shape " + shape_str(shape));
    }
  }
  Tensor tensor;
  tensor.shape_ = shape;
  tensor.strides_ = contiguous_strides(shape);
  tensor.dtype_ = dtype;
  tensor.device_ = device;
  tensor.storage_ = Storage::allocate(tensor.nbytes(), device);
  return tensor;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor tensor = empty(shape, dtype, device);
  if (!tensor.is_dry() && tensor.nbytes() > 0) {
    std::memset(tensor.data(), 0, tensor.nbytes());
  }
  return tensor;
}

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype,
                         std::shared_ptr<const void> owner, Device device) {
  Tensor tensor;
  tensor.shape_ = shape;
  tensor.strides_ = contiguous_strides(shape);
  tensor.dtype_ = dtype;
  tensor.device_ = device;
  tensor.storage_ = Storage::wrap(data, tensor.nbytes(), device, std::move(owner));
  return tensor;
}

Tensor Tensor::from_floats(std::span<const float> values, const Shape& shape, DType dtype) {
  if (static_cast<std::int64_t>(values.size()) != shape_numel(shape)) {
    throw InvalidInputError(fmt::format("Tensor::from_floats: {} values do not fill shape {}",
                                        values.size(), shape_str(shape)));
  }
  Tensor tensor = empty(shape, dtype);
  if (!tensor.is_dry()) {
    convert_elements(values.data(), DType::f32, tensor.data(), dtype, values.size());
  }
  return tensor;
}

// Accessors.

std::int64_t Tensor::normalize_axis(std::int64_t axis, std::int64_t rank) const {
  const std::int64_t normalized = axis < 0 ? axis + rank : axis;
  if (normalized < 0 || normalized >= rank) {
    throw InvalidInputError(fmt::format("axis {} is out of range for tensor {}", axis, describe()));
  }
  return normalized;
}

std::int64_t Tensor::size(std::int64_t axis) const {
  return shape_[normalize_axis(axis, dim())];
}

std::int64_t Tensor::stride(std::int64_t axis) const {
  return strides_[normalize_axis(axis, dim())];
}

bool Tensor::is_contiguous() const {
  std::int64_t expected = 1;
  for (std::size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] != 1 && strides_[i] != expected) {
      return false;
    }
    expected *= shape_[i];
  }
  return true;
}

void* Tensor::data() const {
  if (!storage_) {
    throw Error("Tensor::data: the tensor is undefined");
  }
  if (storage_->is_dry()) {
    throw Error("Tensor::data: " + describe() + " has no data because it was made in a dry run");
  }
  if (dtype_ == DType::packed4 && offset_ % 2 != 0) {
    throw Error("Tensor::data: a packed4 view must start on a whole byte");
  }
  return static_cast<char*>(storage_->data()) +
         dtype_bytes(dtype_, static_cast<std::size_t>(offset_));
}

std::string Tensor::describe() const {
  if (!defined()) {
    return "undefined tensor";
  }
  return fmt::format("{}{} {}", dtype_name(dtype_), shape_str(shape_), device_.str());
}

// Views.

Tensor Tensor::view(const Shape& shape) const {
  if (!is_contiguous()) {
    throw Error("Tensor::view: " + describe() + " is not contiguous; use reshape()");
  }
  Shape resolved = shape;
  std::int64_t known = 1;
  int inferred = -1;
  for (std::size_t i = 0; i < resolved.size(); ++i) {
    if (resolved[i] == -1) {
      if (inferred >= 0) {
        throw InvalidInputError("Tensor::view: more than one -1 in " + shape_str(shape));
      }
      inferred = static_cast<int>(i);
    } else {
      known *= resolved[i];
    }
  }
  if (inferred >= 0) {
    if (known == 0 || numel() % known != 0) {
      throw InvalidInputError(
          fmt::format("Tensor::view: cannot infer -1 in {} for {}", shape_str(shape), describe()));
    }
    resolved[inferred] = numel() / known;
  }
  if (shape_numel(resolved) != numel()) {
    throw InvalidInputError(fmt::format("Tensor::view: shape {} does not match {} elements of {}",
                                        shape_str(shape), numel(), describe()));
  }
  Tensor result = *this;
  result.shape_ = resolved;
  result.strides_ = contiguous_strides(resolved);
  return result;
}

Tensor Tensor::reshape(const Shape& shape) const {
  return is_contiguous() ? view(shape) : contiguous().view(shape);
}

Tensor Tensor::slice(std::int64_t axis, std::int64_t start, std::int64_t end,
                     std::int64_t step) const {
  const std::int64_t a = normalize_axis(axis, dim());
  const std::int64_t extent = shape_[a];
  if (step <= 0) {
    throw InvalidInputError(fmt::format("Tensor::slice: step must be positive, got {}", step));
  }
  if (start < 0)
    start += extent;
  if (end < 0)
    end += extent;
  start = std::clamp<std::int64_t>(start, 0, extent);
  end = std::clamp<std::int64_t>(end, start, extent);
  Tensor result = *this;
  result.offset_ += start * strides_[a];
  result.shape_[a] = (end - start + step - 1) / step;
  result.strides_[a] *= step;
  return result;
}

Tensor Tensor::narrow(std::int64_t axis, std::int64_t start, std::int64_t length) const {
  const std::int64_t a = normalize_axis(axis, dim());
  if (start < 0 || length < 0 || start + length > shape_[a]) {
    throw InvalidInputError(fmt::format("Tensor::narrow: [{}, {}) is outside axis {} of {}", start,
                                        start + length, axis, describe()));
  }
  return slice(a, start, start + length);
}

Tensor Tensor::select(std::int64_t axis, std::int64_t index) const {
  const std::int64_t a = normalize_axis(axis, dim());
  if (index < 0)
    index += shape_[a];
  if (index < 0 || index >= shape_[a]) {
    throw InvalidInputError(
        fmt::format("Tensor::select: index {} is outside axis {} of {}", index, axis, describe()));
  }
  Tensor result = *this;
  result.offset_ += index * strides_[a];
  result.shape_.erase(result.shape_.begin() + a);
  result.strides_.erase(result.strides_.begin() + a);
  return result;
}

Tensor Tensor::permute(const std::vector<std::int64_t>& order) const {
  if (static_cast<std::int64_t>(order.size()) != dim()) {
    throw InvalidInputError(
        fmt::format("Tensor::permute: {} axes given for {}", order.size(), describe()));
  }
  std::vector<bool> seen(order.size(), false);
  Tensor result = *this;
  for (std::size_t i = 0; i < order.size(); ++i) {
    const std::int64_t a = normalize_axis(order[i], dim());
    if (seen[a]) {
      throw InvalidInputError("Tensor::permute: axis repeated in the order");
    }
    seen[a] = true;
    result.shape_[i] = shape_[a];
    result.strides_[i] = strides_[a];
  }
  return result;
}

Tensor Tensor::transpose(std::int64_t axis0, std::int64_t axis1) const {
  std::vector<std::int64_t> order(dim());
  std::iota(order.begin(), order.end(), 0);
  std::swap(order[normalize_axis(axis0, dim())], order[normalize_axis(axis1, dim())]);
  return permute(order);
}

Tensor Tensor::unsqueeze(std::int64_t axis) const {
  const std::int64_t a = normalize_axis(axis, dim() + 1);
  Tensor result = *this;
  const std::int64_t stride = a < dim() ? strides_[a] * shape_[a] : 1;
  result.shape_.insert(result.shape_.begin() + a, 1);
  result.strides_.insert(result.strides_.begin() + a, stride);
  return result;
}

Tensor Tensor::squeeze(std::int64_t axis) const {
  const std::int64_t a = normalize_axis(axis, dim());
  if (shape_[a] != 1) {
    throw InvalidInputError(fmt::format("Tensor::squeeze: axis {} of {} has extent {}, not 1", axis,
                                        describe(), shape_[a]));
  }
  return select(a, 0);
}

// Copies.

void for_each_offset(const Shape& shape, const Shape& strides, std::int64_t base,
                     const std::function<void(std::int64_t)>& visit) {
  const std::int64_t count = shape_numel(shape);
  if (count == 0) {
    return;
  }
  std::vector<std::int64_t> index(shape.size(), 0);
  std::int64_t offset = base;
  for (std::int64_t n = 0; n < count; ++n) {
    visit(offset);
    for (std::size_t axis = shape.size(); axis-- > 0;) {
      if (++index[axis] < shape[axis]) {
        offset += strides[axis];
        break;
      }
      offset -= strides[axis] * (shape[axis] - 1);
      index[axis] = 0;
    }
  }
}

Tensor Tensor::contiguous() const {
  return is_contiguous() ? *this : clone();
}

Tensor Tensor::clone() const {
  Tensor result = empty(shape_, dtype_, device_);
  result.copy_from(*this);
  return result;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) {
    return *this;
  }
  Tensor result = empty(shape_, dtype, device_);
  result.copy_from(*this);
  return result;
}

void Tensor::copy_from(const Tensor& source) {
  if (source.shape_ != shape_) {
    throw InvalidInputError(fmt::format("Tensor::copy_from: shape {} does not match {}",
                                        shape_str(source.shape_), describe()));
  }
  if (is_dry() || source.is_dry() || numel() == 0) {
    return;
  }
  if ((dtype_ == DType::packed4 || source.dtype_ == DType::packed4) &&
      !(is_contiguous() && source.is_contiguous() && dtype_ == source.dtype_)) {
    throw Error("Tensor::copy_from: packed4 tensors copy only contiguously to packed4");
  }
  if (is_contiguous() && source.is_contiguous()) {
    const auto count = static_cast<std::size_t>(numel());
    const char* in = static_cast<const char*>(source.data());
    char* out = static_cast<char*>(data());
    const std::int64_t chunk = 1 << 16;
    parallel_for(0, static_cast<std::int64_t>(count), chunk, [&](std::int64_t b, std::int64_t e) {
      convert_elements(in + dtype_bytes(source.dtype_, b), source.dtype_,
                       out + dtype_bytes(dtype_, b), dtype_, static_cast<std::size_t>(e - b));
    });
    return;
  }
  // Strided: gather the source in logical order, then scatter into this view.
  const std::size_t in_size = dtype_bytes(source.dtype_, 1);
  const std::size_t out_size = dtype_bytes(dtype_, 1);
  const char* in_base = static_cast<const char*>(source.storage_->data());
  char* out_base = static_cast<char*>(storage_->data());
  std::vector<std::int64_t> out_offsets;
  out_offsets.reserve(static_cast<std::size_t>(numel()));
  for_each_offset(shape_, strides_, offset_, [&](std::int64_t o) { out_offsets.push_back(o); });
  std::size_t i = 0;
  for_each_offset(source.shape_, source.strides_, source.offset_, [&](std::int64_t o) {
    convert_elements(in_base + o * in_size, source.dtype_, out_base + out_offsets[i++] * out_size,
                     dtype_, 1);
  });
}

std::vector<float> Tensor::to_floats() const {
  std::vector<float> values(static_cast<std::size_t>(numel()));
  if (values.empty()) {
    return values;
  }
  Tensor destination = from_blob(values.data(), shape_, DType::f32, nullptr, device_);
  destination.copy_from(*this);
  return values;
}

}  // namespace ethereal
