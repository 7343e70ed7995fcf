#include "kernels/cpu/conv.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dense_test_support.h"
#include "runtime/error.h"

namespace ethereal::cpu {
namespace {

using testing::expect_matches;
using testing::Expected;
using ::testing::HasSubstr;
using testing::rounded_to;
using testing::uniform_values;

struct ConvCase {
  std::int64_t batch, in_channels, out_channels, height, width, kernel;
  Conv2dOptions options;
  bool with_bias;
};

// Direct convolution in double over NCHW values with zero padding.
std::vector<Expected> reference_conv(const ConvCase& c, const std::vector<float>& x,
                                     const std::vector<float>& w, const std::vector<float>& bias,
                                     const Shape& out_shape) {
  const Padding2d& pad = c.options.padding;
  const std::int64_t out_h = out_shape[2], out_w = out_shape[3], k = c.kernel;
  std::vector<Expected> out(static_cast<std::size_t>(shape_numel(out_shape)));
  for (std::int64_t n = 0; n < c.batch; ++n) {
    for (std::int64_t o = 0; o < c.out_channels; ++o) {
      for (std::int64_t oy = 0; oy < out_h; ++oy) {
        for (std::int64_t ox = 0; ox < out_w; ++ox) {
          Expected& e =
              out[static_cast<std::size_t>(((n * c.out_channels + o) * out_h + oy) * out_w + ox)];
          e.terms = c.in_channels * k * k + 1;
          for (std::int64_t i = 0; i < c.in_channels; ++i) {
            for (std::int64_t ky = 0; ky < k; ++ky) {
              for (std::int64_t kx = 0; kx < k; ++kx) {
                const std::int64_t y = oy * c.options.stride + ky - pad.top;
                const std::int64_t xx = ox * c.options.stride + kx - pad.left;
                if (y < 0 || y >= c.height || xx < 0 || xx >= c.width) {
                  continue;
                }
                const double product =
                    static_cast<double>(x[static_cast<std::size_t>(
                        ((n * c.in_channels + i) * c.height + y) * c.width + xx)]) *
                    w[static_cast<std::size_t>(((o * c.in_channels + i) * k + ky) * k + kx)];
                e.value += product;
                e.absolute_sum += std::fabs(product);
              }
            }
          }
          if (!bias.empty()) {
            e.value += bias[static_cast<std::size_t>(o)];
            e.absolute_sum += std::fabs(bias[static_cast<std::size_t>(o)]);
          }
        }
      }
    }
  }
  return out;
}

Conv2dOptions options(std::int64_t stride, Padding2d padding) {
  Conv2dOptions result;
  result.stride = stride;
  result.padding = padding;
  return result;
}

const ConvCase kCases[] = {
    {1, 3, 16, 9, 9, 3, options(1, Padding2d::symmetric(1)), true},
    {2, 5, 17, 7, 13, 3, options(1, Padding2d::symmetric(1)), false},
    {1, 17, 5, 13, 9, 1, options(1, {}), true},
    {1, 16, 16, 13, 13, 3, options(2, Padding2d::symmetric(1)), true},
    // The VAE's downsampling: ZeroPad2d(0, 1, 0, 1) then a stride-2 3x3 convolution.
    {1, 16, 16, 9, 7, 3, options(2, {0, 1, 0, 1}), true},
    {2, 3, 5, 7, 9, 3, options(2, {0, 1, 0, 1}), false},
    {1, 17, 3, 9, 9, 3, options(1, {2, 0, 1, 0}), true},
    {1, 5, 16, 7, 7, 1, options(2, {}), false},
    // oneDNN prefers another weight layout at 7x7 than the packed one, so forward() reorders.
    {1, 96, 96, 7, 7, 3, options(1, Padding2d::symmetric(1)), true},
};

void check_case(const ConvCase& c, DType x_dtype, DType weight_dtype, std::uint32_t seed) {
  const Shape x_shape = {c.batch, c.in_channels, c.height, c.width};
  const Shape w_shape = {c.out_channels, c.in_channels, c.kernel, c.kernel};
  const auto x_values =
      rounded_to(uniform_values(static_cast<std::size_t>(shape_numel(x_shape)), seed), x_dtype);
  const auto w_values = rounded_to(
      uniform_values(static_cast<std::size_t>(shape_numel(w_shape)), seed + 1), weight_dtype);
  const auto b_values = c.with_bias
                            ? rounded_to(uniform_values(c.out_channels, seed + 2), weight_dtype)
                            : std::vector<float>();
  const Conv2d conv(
      Tensor::from_floats(w_values, w_shape, weight_dtype),
      c.with_bias ? Tensor::from_floats(b_values, {c.out_channels}, weight_dtype) : Tensor(),
      c.options);
  const Tensor y = conv.forward(Tensor::from_floats(x_values, x_shape, x_dtype));
  ASSERT_EQ(y.shape(), conv.output_shape(x_shape));
  ASSERT_EQ(y.dtype(), x_dtype);
  const Padding2d& pad = c.options.padding;
  expect_matches(
      y, reference_conv(c, rounded_to(x_values, weight_dtype), w_values, b_values, y.shape()),
      fmt::format("x {} kernel {} stride {} padding ({}, {}, {}, {}) {} weights {}",
                  shape_str(x_shape), c.kernel, c.options.stride, pad.left, pad.right, pad.top,
                  pad.bottom, dtype_name(x_dtype), dtype_name(weight_dtype)));
}

TEST(Conv2d, F32MatchesReference) {
  std::uint32_t seed = 1;
  for (const ConvCase& c : kCases) {
    check_case(c, DType::f32, DType::f32, seed += 3);
  }
}

TEST(Conv2d, Bf16MatchesReference) {
  std::uint32_t seed = 100;
  for (const ConvCase& c : kCases) {
    check_case(c, DType::bf16, DType::bf16, seed += 3);
  }
}

TEST(Conv2d, MixedDtypesConvertInput) {
  std::uint32_t seed = 200;
  for (const ConvCase& c : kCases) {
    check_case(c, DType::f32, DType::bf16, seed += 3);
    check_case(c, DType::bf16, DType::f32, seed += 3);
  }
}

TEST(Conv2d, OutputShapeFollowsPaddingAndStride) {
  const Conv2d conv(Tensor::zeros({4, 3, 3, 3}, DType::f32), Tensor(), options(2, {0, 1, 0, 1}));
  EXPECT_EQ(conv.output_shape({2, 3, 128, 64}), (Shape{2, 4, 64, 32}));
  const Conv2d same(Tensor::zeros({4, 3, 3, 3}, DType::f32), Tensor(),
                    options(1, Padding2d::symmetric(1)));
  EXPECT_EQ(same.output_shape({1, 3, 13, 7}), (Shape{1, 4, 13, 7}));
}

TEST(Conv2d, NonContiguousInput) {
  // x is [N, C, W, H] transposed to [N, C, H, W].
  const ConvCase c{1, 5, 16, 9, 7, 3, options(1, Padding2d::symmetric(1)), true};
  const Tensor x_t = Tensor::from_floats(uniform_values(5 * 7 * 9, 300), {1, 5, 7, 9});
  const Tensor x = x_t.transpose(2, 3);
  ASSERT_FALSE(x.is_contiguous());
  const auto w_values = uniform_values(16 * 5 * 9, 301);
  const auto b_values = uniform_values(16, 302);
  const Conv2d conv(Tensor::from_floats(w_values, {16, 5, 3, 3}),
                    Tensor::from_floats(b_values, {16}), c.options);
  const Tensor y = conv.forward(x);
  expect_matches(y, reference_conv(c, x.to_floats(), w_values, b_values, y.shape()),
                 "transposed input");
}

TEST(Conv2d, PackedDtypeOption) {
  Conv2dOptions packed = options(1, Padding2d::symmetric(1));
  packed.packed_dtype = DType::bf16;
  const Conv2d conv(Tensor::zeros({8, 3, 3, 3}, DType::f32), Tensor(), packed);
  EXPECT_EQ(conv.packed_dtype(), DType::bf16);
  EXPECT_FALSE(conv.packed_format().empty());
  EXPECT_GE(conv.packed_weight().nbytes(), dtype_bytes(DType::bf16, 8 * 3 * 3 * 3));
}

TEST(Conv2d, AvoidsReferenceKernelAcrossSizes) {
  // The weight layout oneDNN prefers changes with the spatial size; forcing the packed one on
  // a shape whose fast kernel cannot read it would select the reference kernel.
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (std::int64_t channels : {96, 192, 384}) {
      const Conv2d conv(Tensor::zeros({channels, channels, 3, 3}, dtype), Tensor(),
                        options(1, Padding2d::symmetric(1)));
      for (std::int64_t size : {7, 32, 64, 128, 256, 512}) {
        EXPECT_THAT(conv.implementation({1, channels, size, size}, dtype),
                    ::testing::Not(::testing::StartsWith("ref")))
            << dtype_name(dtype) << " channels " << channels << " size " << size;
      }
    }
  }
}

TEST(Conv2d, RejectsInvalidInputShape) {
  const Conv2d conv(Tensor::zeros({4, 3, 3, 3}, DType::f32), Tensor());
  try {
    conv.forward(Tensor::zeros({1, 5, 8, 8}, DType::f32));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("input shape [1, 5, 8, 8] is invalid"));
    EXPECT_THAT(error.what(), HasSubstr("[N, 3, H, W]"));
  }
  try {
    conv.forward(Tensor::zeros({1, 3, 2, 8}, DType::f32));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("H + 0 >= 3"));
  }
}

TEST(Conv2d, RejectsInvalidWeightBiasAndOptions) {
  try {
    Conv2d conv(Tensor::zeros({4, 3, 3}, DType::f32), Tensor());
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("weight must be a 4-D tensor"));
  }
  try {
    Conv2d conv(Tensor::zeros({4, 3, 3, 3}, DType::f32), Tensor::zeros({3}, DType::f32));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("does not match out_channels 4"));
  }
  try {
    Conv2d conv(Tensor::zeros({4, 3, 3, 3}, DType::f32), Tensor(), options(0, {}));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("stride 0"));
  }
  try {
    Conv2d conv(Tensor::zeros({4, 3, 3, 3}, DType::f16), Tensor());
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("weight dtype is f16"));
  }
}

void conv_workload(DType dtype, std::vector<Shape>* shapes) {
  const Conv2d conv(Tensor::zeros({17, 16, 3, 3}, dtype), Tensor::zeros({17}, dtype),
                    options(2, {0, 1, 0, 1}));
  const Conv2d pointwise(Tensor::zeros({5, 17, 1, 1}, dtype), Tensor());
  const Tensor x = Tensor::zeros({2, 16, 13, 9}, DType::f32);
  const Tensor y = conv.forward(x);
  shapes->push_back(y.shape());
  shapes->push_back(pointwise.forward(y).shape());
}

TEST(Conv2d, DryRunAllocatesLikeRealRun) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    std::vector<Shape> real_shapes, dry_shapes;
    const auto real = testing::stats_of_run(false, [&] { conv_workload(dtype, &real_shapes); });
    const auto dry = testing::stats_of_run(true, [&] { conv_workload(dtype, &dry_shapes); });
    testing::expect_same_statistics(real, dry);
    EXPECT_EQ(real_shapes, dry_shapes);
    ASSERT_EQ(dry_shapes.size(), 2u);
    EXPECT_EQ(dry_shapes[0], (Shape{2, 17, 6, 4}));
    EXPECT_EQ(dry_shapes[1], (Shape{2, 5, 6, 4}));
  }
}

TEST(Conv2d, PackedWeightsAreCountedByAllocator) {
  const Tensor w = Tensor::zeros({128, 64, 3, 3}, DType::bf16);
  testing::stats_of_run(false, [&] {
    const Conv2d conv(w, Tensor());
    EXPECT_EQ(
        current_allocator(Device::cpu()).stats().allocated_bytes.current,
        static_cast<std::int64_t>(CpuCachingAllocator::round_size(conv.packed_weight().nbytes())));
    EXPECT_GE(conv.packed_weight().nbytes(), w.nbytes());
  });
}

}  // namespace
}  // namespace ethereal::cpu
