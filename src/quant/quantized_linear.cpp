#include "quant/quantized_linear.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "kernels/cpu/onednn.h"
#include "quant/direct_linear.h"
#include "quant/packed_dequant.h"
#include "quant/panel_matmul.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "runtime/parallel.h"

namespace ethereal::quant {

namespace {

constexpr std::string_view kKernel = "quantized linear";
// A weight of at most this many bytes in bf16 is one panel, which saves copying the output panel
// by panel: a 3072 x 3072 weight (18 MiB) is. Larger weights use panels of about
// kDefaultPanelBytes, small enough to stay in a 32 MiB L3 cache between decoding and the
// matmul. NOTE: on a shared 2-core Zen 4 VM, 24 MiB panels for 3072 -> 12288 measured 1 to 2
// points of wall-clock ratio worse than 7.5 MiB panels at M = 1024; the evidence is weak (see
// docs/benchmarks/quant.md).
constexpr std::int64_t kSinglePanelBytes = std::int64_t{24} << 20;
constexpr std::int64_t kDefaultPanelBytes = std::int64_t{8} << 20;
// Bound on the temporary result of one chunk of rows of a panel.
constexpr std::int64_t kTemporaryBytes = std::int64_t{4} << 20;

std::int64_t round_up(std::int64_t value, std::int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

std::int64_t choose_panel_columns(std::int64_t k, std::int64_t n, std::int64_t requested) {
  if (requested > 0) {
    return round_up(requested, 64);
  }
  if (2 * k * n <= kSinglePanelBytes) {
    return round_up(n, 64);
  }
  const std::int64_t widest = std::max<std::int64_t>(64, kDefaultPanelBytes / (2 * k) / 64 * 64);
  // Equal panels: N = 12288 with room for 1344 columns gives 10 x 1280 (the last one 768)
  // rather than 9 x 1344 + 192.
  const std::int64_t panels = (n + widest - 1) / widest;
  return round_up((n + panels - 1) / panels, 64);
}

void check_float(const Tensor& tensor, std::string_view argument) {
  if (tensor.dtype() != DType::f32 && tensor.dtype() != DType::bf16) {
    throw Error(fmt::format("quantized linear: {} {} has dtype {}; expected f32 or bf16", argument,
                            tensor.describe(), dtype_name(tensor.dtype())));
  }
}

// Rows of a panel's temporary result: about kTemporaryBytes, a multiple of 32 rows.
std::int64_t temporary_rows(std::int64_t width, DType dtype) {
  const auto row_bytes =
      static_cast<std::int64_t>(dtype_bytes(dtype, static_cast<std::size_t>(width)));
  return std::max<std::int64_t>(32, kTemporaryBytes / row_bytes / 32 * 32);
}

// Copies a dense [rows, width] panel result into columns first ... first + width - 1 of `out`
// [rows, N] (contiguous, same dtype).
void copy_columns(const Tensor& panel, const Tensor& out, std::int64_t first) {
  const std::int64_t rows = panel.size(0);
  const std::size_t element = dtype_bytes(out.dtype(), 1);
  const std::size_t panel_row = element * static_cast<std::size_t>(panel.size(1));
  const std::size_t out_row = element * static_cast<std::size_t>(out.size(1));
  const auto* source = static_cast<const std::uint8_t*>(panel.data());
  auto* destination = static_cast<std::uint8_t*>(out.data()) + element * first;
  const std::int64_t grain =
      std::max<std::int64_t>(1, 65536 / static_cast<std::int64_t>(panel_row));
  parallel_for(0, rows, grain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t m = begin; m < end; ++m) {
      std::memcpy(destination + m * out_row, source + m * panel_row, panel_row);
    }
  });
}

}  // namespace

// The oneDNN matmuls of the panels, created on the first large-batch call. Every panel uses
// `full`, except the last one when N is not a multiple of the panel width, which uses `last`.
struct QuantizedLinear::Panels {
  std::once_flag created;
  std::unique_ptr<detail::PanelMatmul> full;
  std::unique_ptr<detail::PanelMatmul> last;

  void create(std::int64_t k, std::int64_t n, std::int64_t width, bool has_bias) {
    std::call_once(created, [&] {
      full = std::make_unique<detail::PanelMatmul>(k, std::min(width, n), has_bias);
      if (n > width && n % width != 0) {
        last = std::make_unique<detail::PanelMatmul>(k, n % width, has_bias);
      }
    });
  }
};

QuantizedLinear::QuantizedLinear(QuantizedWeight weight, const Tensor& bias,
                                 QuantizedLinearOptions options)
    : weight_(std::move(weight)), options_(options), panels_(std::make_unique<Panels>()) {
  validate(weight_);
  if (bias.defined()) {
    if (bias.dim() != 1 || bias.size(0) != weight_.out_features) {
      throw Error(
          fmt::format("quantized linear: bias {} does not match out_features {}; "
                      "expected [{}]",
                      bias.describe(), weight_.out_features, weight_.out_features));
    }
    check_float(bias, "bias");
    bias_ = bias.to(DType::f32).contiguous();
  }
  panel_columns_ =
      choose_panel_columns(weight_.in_features, weight_.out_features, options_.panel_columns);
}

QuantizedLinear::~QuantizedLinear() = default;
QuantizedLinear::QuantizedLinear(QuantizedLinear&&) noexcept = default;
QuantizedLinear& QuantizedLinear::operator=(QuantizedLinear&&) noexcept = default;

bool QuantizedLinear::uses_direct_path(std::int64_t rows) const {
  switch (options_.path) {
    case QuantizedLinearOptions::Path::direct: return true;
    case QuantizedLinearOptions::Path::dequantize_matmul: return false;
    case QuantizedLinearOptions::Path::automatic: break;
  }
  return rows < options_.direct_row_limit;
}

Tensor QuantizedLinear::forward(const Tensor& x, std::optional<DType> out_dtype) const {
  if (!x.defined() || x.dim() < 1) {
    throw Error(
        "quantized linear: input must be a tensor [..., in_features] with at least one "
        "dimension");
  }
  Shape out_shape = x.shape();
  out_shape.back() = weight_.out_features;
  Tensor out = Tensor::empty(out_shape, out_dtype.value_or(x.dtype()));
  forward_into(x, out);
  return out;
}

void QuantizedLinear::forward_into(const Tensor& x, const Tensor& out) const {
  const std::int64_t k = weight_.in_features;
  if (!x.defined() || x.dim() < 1 || x.size(-1) != k) {
    throw Error(
        fmt::format("quantized linear: input {} does not end in in_features {}; expected [..., {}]",
                    x.defined() ? x.describe() : "undefined", k, k));
  }
  check_float(x, "input");
  Shape expected = x.shape();
  expected.back() = weight_.out_features;
  if (!out.defined() || out.shape() != expected || !out.is_contiguous()) {
    throw Error(
        fmt::format("quantized linear: output {} is invalid; expected a contiguous "
                    "tensor {}",
                    out.defined() ? out.describe() : "undefined", shape_str(expected)));
  }
  check_float(out, "output");
  const std::int64_t rows = x.numel() / k;
  if (rows == 0) {
    return;
  }
  const bool execute = !dry_run_active() && !x.is_dry() && !out.is_dry() && !weight_.is_dry();
  if (uses_direct_path(rows)) {
    forward_direct(x, out, rows, execute);
  } else {
    forward_panels(x, out, rows, execute);
  }
}

void QuantizedLinear::forward_direct(const Tensor& x, const Tensor& out, std::int64_t rows,
                                     bool execute) const {
  const detail::DirectPlan plan = detail::plan_direct(weight_, rows);
  const Tensor x_contiguous = x.contiguous();
  const Tensor x_bf16 = Tensor::empty({rows, plan.padded_k}, DType::bf16);
  if (!execute) {
    return;
  }
  detail::prepare_direct_input(x_contiguous, plan, x_bf16);
  const float* bias = bias_.defined() ? bias_.data_as<const float>() : nullptr;
  detail::direct_linear(weight_, plan, x_bf16, bias, out.view({rows, weight_.out_features}));
}

void QuantizedLinear::forward_panels(const Tensor& x, const Tensor& out, std::int64_t rows,
                                     bool execute) const {
  const std::int64_t k = weight_.in_features;
  const std::int64_t n = weight_.out_features;
  const std::int64_t width = std::min(panel_columns_, n);
  const std::int64_t panel_count = (n + width - 1) / width;
  panels_->create(k, n, panel_columns_, bias_.defined());
  const detail::PanelMatmul& full = *panels_->full;
  const detail::PanelMatmul* last = panels_->last.get();
  // With several panels, each one is multiplied in chunks of rows, so that the temporary
  // [chunk, width] result stays at about kTemporaryBytes however many rows x has.
  const std::int64_t chunk_rows =
      panel_count == 1
          ? rows
          : std::min(rows, options_.chunk_rows > 0 ? options_.chunk_rows
                                                   : temporary_rows(width, out.dtype()));

  // Shapes: src [rows, K] bf16; each panel's dst [chunk_rows, width] in the output dtype.
  const Tensor src = cpu::onednn_contiguous(x, DType::bf16, kKernel).view({rows, k});
  const Tensor out_2d = out.view({rows, n});
  std::size_t scratch_bytes = full.layout().bytes;
  std::size_t scratchpad_bytes = 0;
  for (const detail::PanelMatmul* matmul : {&full, last}) {
    if (matmul == nullptr) {
      continue;
    }
    scratch_bytes = std::max(scratch_bytes, matmul->layout().bytes);
    scratchpad_bytes =
        std::max(scratchpad_bytes, matmul->scratchpad_bytes(chunk_rows, out.dtype()));
    if (rows % chunk_rows != 0) {
      scratchpad_bytes =
          std::max(scratchpad_bytes, matmul->scratchpad_bytes(rows % chunk_rows, out.dtype()));
    }
  }
  const Tensor scratch = Tensor::empty({static_cast<std::int64_t>(scratch_bytes)}, DType::uint8);
  const Tensor temporary =
      panel_count > 1 ? Tensor::empty({chunk_rows * width}, out.dtype()) : Tensor();
  const Tensor scratchpad =
      scratchpad_bytes > 0
          ? Tensor::empty({static_cast<std::int64_t>(scratchpad_bytes)}, DType::uint8)
          : Tensor();

  for (std::int64_t panel = 0; panel < panel_count; ++panel) {
    const std::int64_t first = panel * width;
    const std::int64_t columns = std::min(width, n - first);
    const detail::PanelMatmul& matmul = columns == width ? full : *last;
    if (execute) {
      dequantize_to_packed(weight_, first, matmul.layout(), scratch.data());
    }
    const Tensor bias =
        bias_.defined() ? bias_.narrow(0, first, columns).view({1, columns}) : Tensor();
    if (panel_count == 1) {
      matmul.run(src, scratch, bias, out_2d, scratchpad, execute);
      continue;
    }
    for (std::int64_t m0 = 0; m0 < rows; m0 += chunk_rows) {
      const std::int64_t chunk = std::min(chunk_rows, rows - m0);
      const Tensor dst = temporary.narrow(0, 0, chunk * columns).view({chunk, columns});
      matmul.run(src.narrow(0, m0, chunk), scratch, bias, dst, scratchpad, execute);
      if (execute) {
        copy_columns(dst, out_2d.narrow(0, m0, chunk), first);
      }
    }
  }
}

}  // namespace ethereal::quant
