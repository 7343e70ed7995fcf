#include "kernels/cpu/matmul.h"

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

// Computes alpha * a x b (or b^T) in double for tensors of equal rank whose batch dimensions
// broadcast. Values are read from the tensors in logical order, so any strides work.
std::vector<Expected> reference_matmul(const Tensor& a, const Tensor& b, bool transpose_b,
                                       float alpha, const Shape& out_shape) {
  const std::vector<float> a_values = a.to_floats();
  const std::vector<float> b_values = b.to_floats();
  const std::int64_t rank = static_cast<std::int64_t>(out_shape.size());
  const std::int64_t m = out_shape[rank - 2];
  const std::int64_t n = out_shape[rank - 1];
  const std::int64_t k = a.size(-1);
  const std::int64_t batch = shape_numel(Shape(out_shape.begin(), out_shape.end() - 2));
  std::vector<Expected> out(static_cast<std::size_t>(batch * m * n));
  for (std::int64_t index = 0; index < batch; ++index) {
    // Batch offsets of a and b, treating their size-1 dimensions as broadcast.
    std::int64_t a_batch = 0, b_batch = 0, rest = index;
    std::int64_t a_scale = 1, b_scale = 1;
    for (std::int64_t d = rank - 3; d >= 0; --d) {
      const std::int64_t coordinate = rest % out_shape[d];
      rest /= out_shape[d];
      a_batch += (a.size(d) == 1 ? 0 : coordinate) * a_scale;
      b_batch += (b.size(d) == 1 ? 0 : coordinate) * b_scale;
      a_scale *= a.size(d);
      b_scale *= b.size(d);
    }
    for (std::int64_t i = 0; i < m; ++i) {
      for (std::int64_t j = 0; j < n; ++j) {
        Expected& e = out[static_cast<std::size_t>((index * m + i) * n + j)];
        e.terms = k;
        for (std::int64_t p = 0; p < k; ++p) {
          const float a_value = a_values[static_cast<std::size_t>((a_batch * m + i) * k + p)];
          const std::int64_t b_offset =
              transpose_b ? (b_batch * n + j) * k + p : (b_batch * k + p) * n + j;
          const double product =
              static_cast<double>(alpha) * a_value * b_values[static_cast<std::size_t>(b_offset)];
          e.value += product;
          e.absolute_sum += std::fabs(product);
        }
      }
    }
  }
  return out;
}

Tensor random_tensor(const Shape& shape, DType dtype, std::uint32_t seed) {
  return Tensor::from_floats(uniform_values(static_cast<std::size_t>(shape_numel(shape)), seed),
                             shape, dtype);
}

struct MatmulCase {
  Shape a_shape;
  Shape b_shape;
  bool transpose_b;
  float alpha;
};

const MatmulCase kCases[] = {
    {{1, 1}, {1, 1}, false, 1.0f},
    {{17, 33}, {33, 3}, false, 1.0f},
    {{3, 65, 127}, {3, 127, 17}, false, 1.0f},
    {{3, 65, 127}, {3, 17, 127}, true, 0.125f},
    {{2, 3, 33, 64}, {2, 3, 130, 64}, true, 0.5f},
    {{2, 3, 7, 9}, {2, 3, 9, 13}, false, -2.0f},
    // Broadcast batch dimensions: b unbatched, b with a size-1 dimension, a broadcast.
    {{4, 17, 33}, {33, 5}, false, 1.0f},
    {{2, 4, 17, 33}, {1, 4, 5, 33}, true, 1.0f},
    {{1, 9, 16}, {3, 16, 7}, false, 1.0f},
};

void check_case(const MatmulCase& c, DType dtype, std::uint32_t seed) {
  const Tensor a = random_tensor(c.a_shape, dtype, seed);
  const Tensor b = random_tensor(c.b_shape, dtype, seed + 1);
  const Tensor out = matmul(a, b, c.transpose_b, c.alpha);
  EXPECT_EQ(out.dtype(), dtype);
  // The reference needs equal ranks: add leading size-1 dimensions.
  Tensor a_full = a, b_full = b;
  while (a_full.dim() < out.dim())
    a_full = a_full.unsqueeze(0);
  while (b_full.dim() < out.dim())
    b_full = b_full.unsqueeze(0);
  expect_matches(out, reference_matmul(a_full, b_full, c.transpose_b, c.alpha, out.shape()),
                 fmt::format("a {} b {} transpose_b {} alpha {} {}", shape_str(c.a_shape),
                             shape_str(c.b_shape), c.transpose_b, c.alpha, dtype_name(dtype)));
}

TEST(Matmul, F32MatchesReference) {
  std::uint32_t seed = 1;
  for (const MatmulCase& c : kCases) {
    check_case(c, DType::f32, seed += 2);
  }
}

TEST(Matmul, Bf16MatchesReference) {
  std::uint32_t seed = 100;
  for (const MatmulCase& c : kCases) {
    check_case(c, DType::bf16, seed += 2);
  }
}

TEST(Matmul, OutputShapeBroadcastsBatch) {
  const Tensor out =
      matmul(Tensor::zeros({1, 4, 3, 5}, DType::f32), Tensor::zeros({2, 1, 5, 7}, DType::f32));
  EXPECT_EQ(out.shape(), (Shape{2, 4, 3, 7}));
}

TEST(Matmul, StridedHeadViews) {
  // Attention layout: q and k stored [seq, heads, dim], viewed as [heads, seq, dim].
  for (DType dtype : {DType::f32, DType::bf16}) {
    const std::int64_t seq = 19, heads = 3, dim = 16;
    const Tensor q = random_tensor({seq, heads, dim}, dtype, 300).transpose(0, 1);
    const Tensor k = random_tensor({seq, heads, dim}, dtype, 301).transpose(0, 1);
    ASSERT_FALSE(q.is_contiguous());
    const Tensor scores = matmul(q, k, true, 0.25f);
    ASSERT_EQ(scores.shape(), (Shape{heads, seq, seq}));
    expect_matches(scores, reference_matmul(q, k, true, 0.25f, scores.shape()),
                   fmt::format("strided heads {}", dtype_name(dtype)));
  }
}

TEST(Matmul, SlicedInputWithPaddedRows) {
  // a is a column slice: rows are 40 elements apart but only 33 long.
  const Tensor a = random_tensor({2, 9, 40}, DType::f32, 400).narrow(2, 3, 33);
  const Tensor b = random_tensor({2, 33, 6}, DType::f32, 401);
  const Tensor out = matmul(a, b);
  expect_matches(out, reference_matmul(a, b, false, 1.0f, out.shape()), "sliced a");
}

TEST(Matmul, ZeroInnerDimensionGivesZeros) {
  const Tensor out =
      matmul(Tensor::zeros({2, 3, 0}, DType::f32), Tensor::zeros({2, 0, 4}, DType::f32));
  ASSERT_EQ(out.shape(), (Shape{2, 3, 4}));
  for (float value : out.to_floats()) {
    EXPECT_EQ(value, 0.0f);
  }
}

TEST(Matmul, RejectsMismatchedInnerDimension) {
  try {
    matmul(Tensor::zeros({2, 3, 4}, DType::f32), Tensor::zeros({2, 5, 6}, DType::f32));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("has K = 4 but b"));
  }
  try {
    matmul(Tensor::zeros({2, 3, 4}, DType::f32), Tensor::zeros({2, 6, 5}, DType::f32), true);
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("(b is transposed)"));
  }
}

TEST(Matmul, RejectsBadBatchDtypeAndRank) {
  try {
    matmul(Tensor::zeros({2, 3, 4}, DType::f32), Tensor::zeros({3, 4, 5}, DType::f32));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("do not broadcast"));
  }
  try {
    matmul(Tensor::zeros({3, 4}, DType::f32), Tensor::zeros({4, 5}, DType::bf16));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("different dtypes"));
  }
  try {
    matmul(Tensor::zeros({4}, DType::f32), Tensor::zeros({4, 5}, DType::f32));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("at least 2 dimensions"));
  }
  try {
    matmul(Tensor::zeros({3, 4}, DType::int32), Tensor::zeros({4, 5}, DType::int32));
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), HasSubstr("dtype int32 is not supported"));
  }
}

void matmul_workload(std::vector<Shape>* shapes) {
  // Direct, transposed, strided and broadcast (copied) products.
  const Tensor a = Tensor::zeros({2, 3, 33, 64}, DType::bf16);
  const Tensor b = Tensor::zeros({2, 3, 130, 64}, DType::bf16);
  shapes->push_back(matmul(a, b, true).shape());
  const Tensor q = Tensor::zeros({19, 3, 16}, DType::f32).transpose(0, 1);
  shapes->push_back(matmul(q, q, true).shape());
  shapes->push_back(matmul(Tensor::zeros({2, 4, 17, 33}, DType::f32),
                           Tensor::zeros({1, 4, 5, 33}, DType::f32), true)
                        .shape());
}

TEST(Matmul, DryRunAllocatesLikeRealRun) {
  std::vector<Shape> real_shapes, dry_shapes;
  const auto real = testing::stats_of_run(false, [&] { matmul_workload(&real_shapes); });
  const auto dry = testing::stats_of_run(true, [&] { matmul_workload(&dry_shapes); });
  testing::expect_same_statistics(real, dry);
  EXPECT_EQ(real_shapes, dry_shapes);
  EXPECT_EQ(dry_shapes[0], (Shape{2, 3, 33, 130}));
}

}  // namespace
}  // namespace ethereal::cpu
