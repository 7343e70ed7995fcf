#include "kernels/cpu/concat.h"

#include <cstring>

#include <fmt/format.h>

#include "kernels/cpu/kernel_support.h"
#include "runtime/parallel.h"

namespace ethereal::cpu {

namespace {

std::int64_t normalize_axis(const char* kernel, std::int64_t axis, std::int64_t rank) {
  const std::int64_t normalized = axis < 0 ? axis + rank : axis;
  if (normalized < 0 || normalized >= rank) {
    throw Error(
        fmt::format("{}: axis {} is out of range for a tensor of rank {}", kernel, axis, rank));
  }
  return normalized;
}

Shape concat_shape(const std::vector<Tensor>& inputs, std::int64_t axis) {
  const Tensor& first = inputs.front();
  Shape shape = first.shape();
  shape[axis] = 0;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    if (!t.defined() || t.dtype() != first.dtype() || t.dim() != first.dim()) {
      throw Error(
          fmt::format("concat: input {} is {} but input 0 is {}; all inputs need the same "
                      "dtype and rank",
                      i, t.describe(), first.describe()));
    }
    for (std::int64_t a = 0; a < t.dim(); ++a) {
      if (a != axis && t.size(a) != first.size(a)) {
        throw Error(
            fmt::format("concat: input {} has shape {} but input 0 has {}; they may "
                        "differ only along axis {}",
                        i, shape_str(t.shape()), shape_str(first.shape()), axis));
      }
    }
    shape[axis] += t.size(axis);
  }
  return shape;
}

}  // namespace

Tensor concat(const std::vector<Tensor>& inputs, std::int64_t axis) {
  if (inputs.empty()) {
    throw Error("concat: no inputs; pass at least one tensor");
  }
  if (!inputs.front().defined()) {
    throw Error("concat: input 0 is undefined");
  }
  if (dtype_bits(inputs.front().dtype()) < 8) {
    throw Error(fmt::format("concat: {} has sub-byte elements; unpack it first",
                            inputs.front().describe()));
  }
  axis = normalize_axis("concat", axis, inputs.front().dim());
  const Shape shape = concat_shape(inputs, axis);
  Tensor out = Tensor::empty(shape, inputs.front().dtype());
  bool dry = dry_run_active();
  for (const Tensor& t : inputs) {
    dry = dry || t.is_dry();
  }
  if (dry || out.numel() == 0) {
    return out;
  }

  // out viewed as [outer, shape[axis] * inner]: input i fills a column range of every row.
  std::int64_t outer = 1;
  for (std::int64_t a = 0; a < axis; ++a) {
    outer *= shape[a];
  }
  const std::int64_t inner = out.numel() / (outer * shape[axis]);
  const std::size_t element = dtype_bytes(out.dtype(), 1);
  const std::size_t out_row = static_cast<std::size_t>(shape[axis] * inner) * element;
  std::int64_t start = 0;
  for (const Tensor& t : inputs) {
    const std::int64_t extent = t.size(axis);
    if (!t.is_contiguous()) {
      out.narrow(axis, start, extent).copy_from(t);
    } else if (t.numel() > 0) {
      const std::size_t piece = static_cast<std::size_t>(extent * inner) * element;
      const char* source = static_cast<const char*>(t.data());
      char* destination =
          static_cast<char*>(out.data()) + static_cast<std::size_t>(start * inner) * element;
      const std::int64_t grain =
          std::max<std::int64_t>(1, (1 << 16) / static_cast<std::int64_t>(piece));
      parallel_for(0, outer, grain, [&](std::int64_t begin, std::int64_t end) {
        for (std::int64_t row = begin; row < end; ++row) {
          std::memcpy(destination + row * out_row, source + row * piece, piece);
        }
      });
    }
    start += extent;
  }
  return out;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<std::int64_t>& sizes,
                          std::int64_t axis) {
  axis = normalize_axis("split", axis, x.dim());
  std::int64_t total = 0;
  for (std::int64_t size : sizes) {
    if (size < 0) {
      throw Error(fmt::format("split: negative piece size {}", size));
    }
    total += size;
  }
  if (total != x.size(axis)) {
    throw Error(fmt::format("split: piece sizes sum to {} but axis {} of {} has extent {}", total,
                            axis, x.describe(), x.size(axis)));
  }
  std::vector<Tensor> pieces;
  pieces.reserve(sizes.size());
  std::int64_t start = 0;
  for (std::int64_t size : sizes) {
    pieces.push_back(x.narrow(axis, start, size));
    start += size;
  }
  return pieces;
}

std::vector<Tensor> chunk(const Tensor& x, std::int64_t count, std::int64_t axis) {
  axis = normalize_axis("chunk", axis, x.dim());
  if (count <= 0 || x.size(axis) % count != 0) {
    throw Error(fmt::format("chunk: {} pieces do not divide axis {} of {} (extent {}) evenly",
                            count, axis, x.describe(), x.size(axis)));
  }
  return split(x, std::vector<std::int64_t>(static_cast<std::size_t>(count), x.size(axis) / count),
               axis);
}

}  // namespace ethereal::cpu
