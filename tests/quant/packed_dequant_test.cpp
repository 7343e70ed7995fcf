#include "quant/packed_dequant.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <vector>

#include "quant/quantize.h"
#include "quant/weight_decoder.h"
#include "quant_test_support.h"
#include "runtime/error.h"

namespace ethereal::quant {
namespace {

struct PackCase {
  std::int64_t in_features, out_features;  // of the quantised weight
  std::int64_t first_row, rows;            // the panel written
};

// K and N that are not multiples of the 32 x 64 tiles, panels that start inside the weight, and
// nf4 rows that start in the middle of a byte (odd K) or of a block.
const PackCase kCases[] = {{17, 130, 0, 130}, {130, 17, 0, 17},   {200, 200, 64, 136},
                           {96, 33, 0, 33},   {64, 200, 128, 64}, {33, 65, 1, 64},
                           {3, 5, 2, 3}};

const QuantFormat kFormats[] = {QuantFormat::fp8_e4m3, QuantFormat::nf4, QuantFormat::int8};

std::string label(const PackCase& c, QuantFormat format) {
  return fmt::format("{} weight [{}, {}] rows {} + {}", quant_format_name(format), c.out_features,
                     c.in_features, c.first_row, c.rows);
}

QuantizedWeight make_weight(const PackCase& c, QuantFormat format, std::uint32_t seed) {
  const auto values =
      testing::heavy_tailed_values(static_cast<std::size_t>(c.out_features * c.in_features), seed);
  return quantize(Tensor::from_floats(values, {c.out_features, c.in_features}), format);
}

TEST(PackedDequant, Bf16ElementsAtLayoutOffsetsAndZeroPadding) {
  std::uint32_t seed = 1;
  for (const PackCase& c : kCases) {
    for (QuantFormat format : kFormats) {
      const QuantizedWeight weight = make_weight(c, format, ++seed);
      const cpu::PackedLayout layout =
          cpu::PackedLinear::allocate(c.rows, c.in_features, DType::bf16).layout();
      // Garbage first, so the test checks that the padding is written.
      std::vector<std::uint16_t> packed(layout.bytes / 2, 0xABCD);
      dequantize_to_packed(weight, c.first_row, layout, packed.data());

      const Tensor expected = dequantize(weight, DType::bf16);
      const auto* plain = expected.data_as<const std::uint16_t>();
      std::set<std::int64_t> written;
      for (std::int64_t j = 0; j < c.rows; ++j) {
        for (std::int64_t k = 0; k < c.in_features; ++k) {
          const std::int64_t offset = layout.element_offset(k, j);
          written.insert(offset);
          ASSERT_EQ(packed[static_cast<std::size_t>(offset)],
                    plain[(c.first_row + j) * c.in_features + k])
              << label(c, format) << " element [" << j << ", " << k << "] in " << layout.format;
        }
      }
      for (std::size_t i = 0; i < packed.size(); ++i) {
        if (written.count(static_cast<std::int64_t>(i)) == 0) {
          ASSERT_EQ(packed[i], 0) << label(c, format) << " padding element " << i;
        }
      }
    }
  }
}

TEST(PackedDequant, FastPathMatchesGenericPath) {
  std::uint32_t seed = 50;
  for (const PackCase& c : kCases) {
    for (QuantFormat format : kFormats) {
      const QuantizedWeight weight = make_weight(c, format, ++seed);
      const cpu::PackedLayout layout =
          cpu::PackedLinear::allocate(c.rows, c.in_features, DType::bf16).layout();
      std::vector<std::uint8_t> fast(layout.bytes, 0xAB);
      std::vector<std::uint8_t> generic(layout.bytes, 0xCD);
      dequantize_to_packed(weight, c.first_row, layout, fast.data());
      dequantize_to_packed_generic(weight, c.first_row, layout, generic.data());
      EXPECT_EQ(std::memcmp(fast.data(), generic.data(), layout.bytes), 0) << label(c, format);
    }
  }
}

TEST(PackedDequant, FastPathCoversOneDnnBf16Layout) {
  const cpu::PackedLayout layout = cpu::PackedLinear::allocate(130, 200, DType::bf16).layout();
#if defined(ETHEREAL_QUANT_AVX512)
  // On AVX-512 BF16 machines oneDNN 2.6 packs bf16 weights as BA16a64b2a; elsewhere it may
  // pick another layout, which the generic path serves.
  EXPECT_EQ(has_fast_packed_path(layout), layout.format == "BA16a64b2a") << layout.format;
#else
  EXPECT_FALSE(has_fast_packed_path(layout));
#endif
}

TEST(PackedDequant, F32LayoutHoldsExactValues) {
  const PackCase c{130, 65, 1, 64};
  for (QuantFormat format : kFormats) {
    const QuantizedWeight weight = make_weight(c, format, 77);
    const cpu::PackedLayout layout =
        cpu::PackedLinear::allocate(c.rows, c.in_features, DType::f32).layout();
    EXPECT_FALSE(has_fast_packed_path(layout));
    std::vector<float> packed(layout.bytes / 4, 1.0f);
    dequantize_to_packed(weight, c.first_row, layout, packed.data());
    const auto expected = dequantize(weight).to_floats();
    for (std::int64_t j = 0; j < c.rows; ++j) {
      for (std::int64_t k = 0; k < c.in_features; ++k) {
        ASSERT_EQ(packed[static_cast<std::size_t>(layout.element_offset(k, j))],
                  expected[static_cast<std::size_t>((c.first_row + j) * c.in_features + k)])
            << label(c, format) << " element [" << j << ", " << k << "]";
      }
    }
  }
}

TEST(PackedDequant, RejectsPanelOutsideWeight) {
  const PackCase c{64, 100, 0, 64};
  const QuantizedWeight weight = make_weight(c, QuantFormat::int8, 3);
  const cpu::PackedLayout layout = cpu::PackedLinear::allocate(64, 64, DType::bf16).layout();
  std::vector<std::uint8_t> packed(layout.bytes);
  EXPECT_THROW(dequantize_to_packed(weight, 40, layout, packed.data()), Error);
  const cpu::PackedLayout wrong_k = cpu::PackedLinear::allocate(64, 65, DType::bf16).layout();
  std::vector<std::uint8_t> other(wrong_k.bytes);
  EXPECT_THROW(dequantize_to_packed(weight, 0, wrong_k, other.data()), Error);
}

}  // namespace
}  // namespace ethereal::quant
