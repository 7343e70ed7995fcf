#include "runtime/tensor.h"

#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "runtime/error.h"

namespace ethereal {
namespace {

Tensor iota_tensor(const Shape& shape, DType dtype = DType::f32) {
  std::vector<float> values(static_cast<std::size_t>(shape_numel(shape)));
  std::iota(values.begin(), values.end(), 0.0f);
  return Tensor::from_floats(values, shape, dtype);
}

TEST(Tensor, EmptyHasContiguousStrides) {
  Tensor t = Tensor::empty({2, 3, 4}, DType::bf16);
  EXPECT_EQ(t.strides(), (Shape{12, 4, 1}));
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.nbytes(), 48u);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.describe(), "bf16[2, 3, 4] cpu");
}

TEST(Tensor, ViewInfersOneAxis) {
  Tensor t = iota_tensor({2, 6});
  Tensor v = t.view({3, -1});
  EXPECT_EQ(v.shape(), (Shape{3, 4}));
  EXPECT_EQ(v.storage(), t.storage());
  EXPECT_THROW(t.view({5, -1}), InvalidInputError);
  EXPECT_THROW(t.view({-1, -1}), InvalidInputError);
}

TEST(Tensor, SliceSelectAndNarrow) {
  Tensor t = iota_tensor({4, 5});
  Tensor column = t.select(1, 2);
  EXPECT_EQ(column.to_floats(), (std::vector<float>{2, 7, 12, 17}));
  Tensor rows = t.slice(0, 1, 4, 2);
  EXPECT_EQ(rows.shape(), (Shape{2, 5}));
  EXPECT_EQ(rows.to_floats(), (std::vector<float>{5, 6, 7, 8, 9, 15, 16, 17, 18, 19}));
  Tensor tail = t.narrow(1, 3, 2);
  EXPECT_EQ(tail.to_floats(), (std::vector<float>{3, 4, 8, 9, 13, 14, 18, 19}));
  EXPECT_FALSE(tail.is_contiguous());
  EXPECT_THROW(t.narrow(1, 4, 2), InvalidInputError);
  EXPECT_THROW(t.select(0, 4), InvalidInputError);
  EXPECT_EQ(t.select(0, -1).to_floats(), (std::vector<float>{15, 16, 17, 18, 19}));
}

TEST(Tensor, PermuteAndContiguousCopy) {
  Tensor t = iota_tensor({2, 3, 4});
  Tensor p = t.permute({2, 0, 1});
  EXPECT_EQ(p.shape(), (Shape{4, 2, 3}));
  EXPECT_FALSE(p.is_contiguous());
  Tensor c = p.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_NE(c.storage(), t.storage());
  std::vector<float> values = c.to_floats();
  // c[k][i][j] = t[i][j][k] = 12 i + 4 j + k
  for (int k = 0; k < 4; ++k) {
    for (int i = 0; i < 2; ++i) {
      for (int j = 0; j < 3; ++j) {
        EXPECT_EQ(values[static_cast<std::size_t>(k * 6 + i * 3 + j)], 12 * i + 4 * j + k);
      }
    }
  }
  EXPECT_THROW(t.permute({0, 0, 1}), InvalidInputError);
}

TEST(Tensor, ReshapeCopiesWhenNeeded) {
  Tensor t = iota_tensor({3, 4}).transpose(0, 1);
  Tensor r = t.reshape({12});
  EXPECT_EQ(r.to_floats(), (std::vector<float>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
  EXPECT_THROW(t.view({12}), Error);
}

TEST(Tensor, UnsqueezeAndSqueeze) {
  Tensor t = iota_tensor({3, 4});
  EXPECT_EQ(t.unsqueeze(0).shape(), (Shape{1, 3, 4}));
  EXPECT_EQ(t.unsqueeze(-1).shape(), (Shape{3, 4, 1}));
  EXPECT_EQ(t.unsqueeze(1).squeeze(1).shape(), (Shape{3, 4}));
  EXPECT_THROW(t.squeeze(0), InvalidInputError);
}

TEST(Tensor, ConvertsDtypeOnCopy) {
  Tensor t = iota_tensor({5}, DType::f32);
  Tensor b = t.to(DType::bf16);
  EXPECT_EQ(b.dtype(), DType::bf16);
  EXPECT_EQ(b.to_floats(), t.to_floats());
  Tensor strided = iota_tensor({4, 4}).slice(1, 0, 4, 2);
  Tensor half = Tensor::empty({4, 2}, DType::f16);
  half.copy_from(strided);
  EXPECT_EQ(half.to_floats(), (std::vector<float>{0, 2, 4, 6, 8, 10, 12, 14}));
  EXPECT_THROW(half.copy_from(t), InvalidInputError);
}

TEST(Tensor, CopyIntoStridedDestination) {
  Tensor destination = Tensor::zeros({3, 4}, DType::f32);
  destination.narrow(1, 1, 2).copy_from(iota_tensor({3, 2}));
  EXPECT_EQ(destination.to_floats(), (std::vector<float>{0, 0, 1, 0, 0, 2, 3, 0, 0, 4, 5, 0}));
}

TEST(Tensor, FromBlobKeepsOwnerAlive) {
  auto owner = std::make_shared<std::vector<float>>(std::vector<float>{1, 2, 3, 4});
  Tensor t = Tensor::from_blob(owner->data(), {2, 2}, DType::f32, owner);
  std::weak_ptr<std::vector<float>> watch = owner;
  owner.reset();
  EXPECT_FALSE(watch.expired());
  EXPECT_EQ(t.to_floats(), (std::vector<float>{1, 2, 3, 4}));
  t = Tensor();
  EXPECT_TRUE(watch.expired());
}

TEST(Tensor, StorageReturnsBytesToAllocator) {
  CpuCachingAllocator allocator;
  ScopedAllocator scope(allocator);
  {
    Tensor a = Tensor::empty({256, 256}, DType::f32);
    Tensor view = a.slice(0, 0, 10);
    a = Tensor();
    EXPECT_EQ(allocator.stats().allocated_bytes.current, 256 * 256 * 4)
        << "a view keeps the storage alive";
  }
  EXPECT_EQ(allocator.stats().allocated_bytes.current, 0);
}

TEST(Tensor, LargeContiguousCopyUsesAllChunks) {
  const std::int64_t n = 1'000'003;
  std::vector<float> values(static_cast<std::size_t>(n));
  std::iota(values.begin(), values.end(), 0.0f);
  Tensor t = Tensor::from_floats(values, {n}, DType::f32);
  Tensor b = t.to(DType::bf16).to(DType::f32);
  std::vector<float> back = b.to_floats();
  for (std::int64_t i = 0; i < n; i += 9973) {
    EXPECT_NEAR(back[static_cast<std::size_t>(i)], values[static_cast<std::size_t>(i)],
                values[static_cast<std::size_t>(i)] / 128.0f);
  }
  EXPECT_EQ(back.back(), bf16_to_f32(f32_to_bf16(values.back())));
}

}  // namespace
}  // namespace ethereal
