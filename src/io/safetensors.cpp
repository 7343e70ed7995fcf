#include "io/safetensors.h"

#include <span>
#include <utility>

#include <fmt/format.h>

#include "io/safetensors_format.h"
#include "runtime/error.h"

namespace ethereal {

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  SafetensorsFile file;
  file.mapping_ = std::make_shared<const FileMapping>(path);
  const FileMapping& mapping = *file.mapping_;

  safetensors_format::Header header = safetensors_format::parse_file(
      std::span<const std::byte>(mapping.data(), mapping.size()), path.string());

  file.tensors_ = std::move(header.tensors);
  file.metadata_ = std::move(header.metadata);
  file.data_bytes_ = header.data_bytes;
  file.names_.reserve(file.tensors_.size());
  for (std::size_t i = 0; i < file.tensors_.size(); ++i) {
    file.names_.push_back(file.tensors_[i].name);
    file.index_.emplace(file.tensors_[i].name, i);
  }
  return file;
}

bool SafetensorsFile::contains(std::string_view name) const {
  return index_.find(name) != index_.end();
}

const TensorInfo& SafetensorsFile::info(std::string_view name) const {
  const auto found = index_.find(name);
  if (found == index_.end()) {
    throw safetensors_format::missing_tensor_error(path().string(), name, names_);
  }
  return tensors_[found->second];
}

Tensor SafetensorsFile::tensor(std::string_view name) const {
  const TensorInfo& entry = info(name);
  if (!entry.dtype) {
    throw InvalidInputError(fmt::format(
        "{}: tensor \"{}\" has dtype {}, which the engine cannot load; convert the checkpoint "
        "to one of {}",
        path().string(), entry.name, entry.stored_dtype,
        safetensors_format::known_stored_dtypes(/*loadable_only=*/true)));
  }
  // from_blob takes a mutable pointer, but the mapping is read-only, so callers must not
  // write through the view (see the header).
  void* data = const_cast<std::byte*>(mapping_->data() + entry.data_begin);
  return Tensor::from_blob(data, entry.shape, *entry.dtype, mapping_);
}

}  // namespace ethereal
