#include "kernels/cpu/onednn.h"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "runtime/error.h"

namespace ethereal::cpu {

dnnl::engine& onednn_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& onednn_stream() {
  thread_local dnnl::stream stream(onednn_engine());
  return stream;
}

dnnl::memory::data_type onednn_data_type(DType dtype, std::string_view kernel) {
  switch (dtype) {
    case DType::f32: return dnnl::memory::data_type::f32;
    case DType::bf16: return dnnl::memory::data_type::bf16;
    default:
      throw Error(fmt::format("{}: dtype {} is not supported; expected f32 or bf16", kernel,
                              dtype_name(dtype)));
  }
}

dnnl::memory::dims onednn_dims(const Shape& shape) {
  return dnnl::memory::dims(shape.begin(), shape.end());
}

dnnl::memory::desc onednn_plain_desc(const Tensor& tensor, std::string_view kernel) {
  return onednn_plain_desc(tensor, tensor.dtype(), kernel);
}

dnnl::memory::desc onednn_plain_desc(const Tensor& tensor, DType dtype, std::string_view kernel) {
  // A size-1 dimension may carry any stride in a view. Giving it the extent of the next inner
  // dimension lets oneDNN recognise plain layouts, so it picks its fast kernels.
  dnnl::memory::dims strides = onednn_dims(tensor.strides());
  const Shape& shape = tensor.shape();
  for (std::size_t i = strides.size(); i-- > 0;) {
    if (shape[i] == 1) {
      strides[i] = i + 1 < strides.size() ? strides[i + 1] * shape[i + 1] : 1;
    }
  }
  return dnnl::memory::desc(onednn_dims(tensor.shape()), onednn_data_type(dtype, kernel), strides);
}

dnnl::memory onednn_memory(const Tensor& tensor, std::string_view kernel) {
  return onednn_memory(onednn_plain_desc(tensor, kernel), tensor);
}

dnnl::memory onednn_memory(const dnnl::memory::desc& desc, const Tensor& tensor) {
  return dnnl::memory(desc, onednn_engine(), tensor.data());
}

Tensor empty_for_desc(const dnnl::memory::desc& desc) {
  return Tensor::empty({static_cast<std::int64_t>(desc.get_size())}, DType::uint8);
}

Tensor empty_scratchpad(const dnnl::primitive_desc_base& pd) {
  const std::size_t bytes = pd.scratchpad_desc().get_size();
  if (bytes == 0) {
    return Tensor();
  }
  return Tensor::empty({static_cast<std::int64_t>(bytes)}, DType::uint8);
}

dnnl::primitive_attr onednn_attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

std::string onednn_layout_name(const dnnl::memory::desc& desc) {
  const dnnl_memory_desc_t& data = desc.data;
  if (data.format_kind != dnnl_blocked) {
    return "not blocked";
  }
  const dnnl_blocking_desc_t& blocking = data.format_desc.blocking;
  std::vector<bool> blocked(static_cast<std::size_t>(data.ndims), false);
  for (int i = 0; i < blocking.inner_nblks; ++i) {
    blocked[static_cast<std::size_t>(blocking.inner_idxs[i])] = true;
  }
  std::vector<int> order(static_cast<std::size_t>(data.ndims));
  std::iota(order.begin(), order.end(), 0);
  // Largest stride first; ties (size-1 dimensions) keep the logical order.
  std::stable_sort(order.begin(), order.end(),
                   [&](int x, int y) { return blocking.strides[x] > blocking.strides[y]; });
  std::string name;
  for (int axis : order) {
    const char letter = static_cast<char>('a' + axis);
    name +=
        blocked[static_cast<std::size_t>(axis)] ? static_cast<char>(letter - 'a' + 'A') : letter;
  }
  for (int i = 0; i < blocking.inner_nblks; ++i) {
    name += fmt::format("{}{}", blocking.inner_blks[i],
                        static_cast<char>('a' + blocking.inner_idxs[i]));
  }
  return name;
}

void onednn_execute(const dnnl::primitive& primitive,
                    std::unordered_map<int, dnnl::memory> arguments, const Tensor& scratchpad) {
  if (scratchpad.defined()) {
    arguments.emplace(
        DNNL_ARG_SCRATCHPAD,
        dnnl::memory(dnnl::memory::desc({scratchpad.numel()}, dnnl::memory::data_type::u8,
                                        dnnl::memory::format_tag::a),
                     onednn_engine(), scratchpad.data()));
  }
  dnnl::stream& stream = onednn_stream();
  primitive.execute(stream, arguments);
  stream.wait();
}

void onednn_reorder(const dnnl::memory::desc& source_desc, const Tensor& source,
                    const dnnl::memory::desc& destination_desc, const Tensor& destination,
                    bool execute) {
  // oneDNN keeps reorder primitives in its own primitive cache (ONEDNN_VERBOSE=2 reports
  // cache_hit), so creating one per call costs a descriptor, not a JIT compilation.
  const dnnl::reorder::primitive_desc pd(onednn_engine(), source_desc, onednn_engine(),
                                         destination_desc, onednn_attr());
  const Tensor scratchpad = empty_scratchpad(pd);
  if (!execute) {
    return;
  }
  onednn_execute(dnnl::reorder(pd),
                 {{DNNL_ARG_FROM, onednn_memory(source_desc, source)},
                  {DNNL_ARG_TO, onednn_memory(destination_desc, destination)}},
                 scratchpad);
}

Tensor onednn_contiguous(const Tensor& source, DType dtype, std::string_view kernel) {
  if (source.is_contiguous() && source.dtype() == dtype) {
    return source;
  }
  Tensor result = Tensor::empty(source.shape(), dtype);
  if (source.numel() == 0) {
    return result;
  }
  const bool execute = !source.is_dry() && !result.is_dry();
  onednn_reorder(onednn_plain_desc(source, kernel), source, onednn_plain_desc(result, kernel),
                 result, execute);
  return result;
}

}  // namespace ethereal::cpu
