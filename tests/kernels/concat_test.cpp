#include "kernels/cpu/concat.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/cpu/resize.h"
#include "vector_kernels_test_support.h"

namespace ethereal::cpu {
namespace {

using vector_testing::expect_dry_run_matches;
using vector_testing::expect_error_containing;
using vector_testing::uniform_tensor;

// Concatenation by indexing: element (i0, ..., ik) of the result comes from the input whose
// range along `axis` contains i_axis.
std::vector<float> reference_concat(const std::vector<Tensor>& inputs, std::int64_t axis) {
  Shape shape = inputs[0].shape();
  shape[axis] = 0;
  for (const Tensor& t : inputs) {
    shape[axis] += t.size(axis);
  }
  std::vector<std::vector<float>> values;
  for (const Tensor& t : inputs) {
    values.push_back(t.to_floats());
  }
  std::vector<float> out(static_cast<std::size_t>(shape_numel(shape)));
  std::int64_t inner = 1;
  for (std::size_t a = axis + 1; a < shape.size(); ++a) {
    inner *= shape[a];
  }
  for (std::size_t flat = 0; flat < out.size(); ++flat) {
    const std::int64_t outer = static_cast<std::int64_t>(flat) / (inner * shape[axis]);
    std::int64_t along = static_cast<std::int64_t>(flat) / inner % shape[axis];
    const std::int64_t within = static_cast<std::int64_t>(flat) % inner;
    std::size_t piece = 0;
    while (along >= inputs[piece].size(axis)) {
      along -= inputs[piece++].size(axis);
    }
    const std::int64_t extent = inputs[piece].size(axis);
    out[flat] = values[piece][static_cast<std::size_t>((outer * extent + along) * inner + within)];
  }
  return out;
}

TEST(Concat, AnyAxisAnyCount) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (std::int64_t axis : {0, 1, 2}) {
      std::vector<Tensor> inputs;
      for (std::int64_t i = 0; i < 3; ++i) {
        Shape shape{2, 3, 5};
        shape[axis] = i + 1;
        inputs.push_back(uniform_tensor(shape, dtype, 179 + static_cast<std::uint32_t>(i)));
      }
      const Tensor out = concat(inputs, axis);
      EXPECT_TRUE(out.is_contiguous());
      EXPECT_EQ(out.dtype(), dtype);
      EXPECT_EQ(out.to_floats(), reference_concat(inputs, axis))
          << dtype_name(dtype) << " axis " << axis;
    }
  }
}

TEST(Concat, NegativeAxisAndStridedInput) {
  const Tensor a = uniform_tensor({4, 6}, DType::f32, 181).transpose(0, 1);  // [6, 4]
  const Tensor b = uniform_tensor({6, 3}, DType::f32, 183);
  ASSERT_FALSE(a.is_contiguous());
  const Tensor out = concat({a, b}, -1);
  EXPECT_EQ(out.shape(), (Shape{6, 7}));
  EXPECT_EQ(out.to_floats(), reference_concat({a, b}, 1));
}

TEST(Concat, TextThenImageTokens) {
  // The joint attention sequence: [text tokens, image tokens] along the token axis.
  const Tensor text = uniform_tensor({5, 2, 8}, DType::bf16, 185);
  const Tensor image = uniform_tensor({11, 2, 8}, DType::bf16, 187);
  const Tensor joint = concat({text, image}, 0);
  const std::vector<Tensor> parts = split(joint, {5, 11}, 0);
  EXPECT_EQ(parts[0].to_floats(), text.to_floats());
  EXPECT_EQ(parts[1].to_floats(), image.to_floats());
}

TEST(Concat, RejectsMismatchedShapes) {
  const Tensor a = Tensor::zeros({2, 3}, DType::f32);
  const Tensor b = Tensor::zeros({3, 3}, DType::f32);
  expect_error_containing([&] { concat({a, b}, 1); }, {"concat", "input 1", "[3, 3]", "axis 1"});
  const Tensor c = Tensor::zeros({2, 3}, DType::bf16);
  expect_error_containing([&] { concat({a, c}, 0); }, {"concat", "same dtype"});
  expect_error_containing([&] { concat({}, 0); }, {"concat", "no inputs"});
}

TEST(Concat, DryRunAllocatesLikeRealRun) {
  expect_dry_run_matches(
      [] {
        return concat(
            {uniform_tensor({3, 7}, DType::bf16, 1), uniform_tensor({3, 2}, DType::bf16, 2)}, 1);
      },
      "concat");
}

TEST(Split, ReturnsViewsSharingStorage) {
  Tensor x = uniform_tensor({4, 10}, DType::f32, 191);
  std::vector<Tensor> pieces = split(x, {3, 0, 7}, 1);
  ASSERT_EQ(pieces.size(), 3u);
  EXPECT_EQ(pieces[0].shape(), (Shape{4, 3}));
  EXPECT_EQ(pieces[1].shape(), (Shape{4, 0}));
  EXPECT_EQ(pieces[2].shape(), (Shape{4, 7}));
  EXPECT_EQ(pieces[2].storage(), x.storage());
  pieces[2].copy_from(Tensor::zeros({4, 7}, DType::f32));
  EXPECT_EQ(x.narrow(1, 3, 7).to_floats(), std::vector<float>(28, 0.0f));
  EXPECT_EQ(concat(pieces, 1).to_floats(), x.to_floats());
}

TEST(Split, ChunkIntoEqualParts) {
  const Tensor mod = uniform_tensor({2, 18}, DType::bf16, 193);
  const std::vector<Tensor> parts = chunk(mod, 6, -1);
  ASSERT_EQ(parts.size(), 6u);
  for (std::size_t i = 0; i < parts.size(); ++i) {
    EXPECT_EQ(parts[i].to_floats(), mod.narrow(1, static_cast<std::int64_t>(3 * i), 3).to_floats());
  }
}

TEST(Split, RejectsSizesThatDoNotAddUp) {
  const Tensor x = Tensor::zeros({4, 10}, DType::f32);
  expect_error_containing([&] { split(x, {3, 6}, 1); }, {"split", "sum to 9", "extent 10"});
  expect_error_containing([&] { chunk(x, 3, 1); }, {"chunk", "3 pieces", "extent 10"});
}

std::vector<float> reference_upsample(const Tensor& x) {
  const std::vector<float> values = x.to_floats();
  const std::int64_t height = x.size(-2);
  const std::int64_t width = x.size(-1);
  const std::int64_t planes = x.numel() / (height * width);
  std::vector<float> out;
  for (std::int64_t p = 0; p < planes; ++p) {
    for (std::int64_t i = 0; i < 2 * height; ++i) {
      for (std::int64_t j = 0; j < 2 * width; ++j) {
        out.push_back(values[static_cast<std::size_t>((p * height + i / 2) * width + j / 2)]);
      }
    }
  }
  return out;
}

TEST(UpsampleNearest2x, MatchesIndexing) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (const Shape& shape : {Shape{1, 1}, Shape{3, 5}, Shape{2, 3, 7, 9}, Shape{1, 96, 17, 33}}) {
      const Tensor x = uniform_tensor(shape, dtype, 197);
      const Tensor y = upsample_nearest2x(x);
      Shape expected_shape = shape;
      expected_shape[shape.size() - 2] *= 2;
      expected_shape[shape.size() - 1] *= 2;
      EXPECT_EQ(y.shape(), expected_shape);
      EXPECT_EQ(y.to_floats(), reference_upsample(x)) << shape_str(shape);
    }
  }
}

TEST(UpsampleNearest2x, StridedInput) {
  const Tensor x = uniform_tensor({2, 6, 5}, DType::f32, 199).transpose(1, 2);  // [2, 5, 6]
  EXPECT_EQ(upsample_nearest2x(x).to_floats(), reference_upsample(x));
}

TEST(UpsampleNearest2x, RejectsVectorAndDryRun) {
  const Tensor v = Tensor::zeros({4}, DType::f32);
  expect_error_containing([&] { upsample_nearest2x(v); },
                          {"upsample_nearest2x", "2 axes", "f32[4]"});
  expect_dry_run_matches(
      [] {
        return upsample_nearest2x(uniform_tensor({1, 3, 5, 7}, DType::bf16, 1));
      },
      "upsample_nearest2x");
}

}  // namespace
}  // namespace ethereal::cpu
