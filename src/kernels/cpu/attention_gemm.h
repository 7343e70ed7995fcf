// Register-blocked GEMM micro-kernels for attention: C[rows, 16 * blocks] (+)= A B, f32
// accumulation, with A row-major and B packed in column panels.
//
// Element types: bf16 (pairs of k multiplied with vdpbf16ps, needs AVX512-BF16) or f32. With
// group size g = 2 for bf16 and 1 for f32, B is packed as column blocks of 16 columns, each
// block holding for every k group the 16 x g elements [k group][column][g]:
//   B_packed[block][kk][c][e] = B[kk * g + e][block * 16 + c]
// so one 64-byte load fetches a k group of 16 columns. Consecutive blocks are
// `block_stride` elements apart. A row r is read as k groups of g adjacent elements at
// a + r * lda, and one group is broadcast to all 16 lanes. The k extent must be a multiple of g.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/cpu/simd.h"

// bf16 products need AVX512-BF16 (vdpbf16ps); without it attention computes in f32.
#if defined(ETHEREAL_SIMD_AVX512) && defined(__AVX512BF16__)
#define ETHEREAL_ATTENTION_BF16 1
#endif

namespace ethereal::cpu::attention_detail {

using simd::bf16_t;

// Rows and 16-column blocks of the largest micro-tile: 6 x 4 accumulators use 24 of the 32
// vector registers, leaving room for the 4 B vectors.
inline constexpr int kTileRows = 6;
inline constexpr int kTileBlocks = 4;

template <typename E>
struct GemmArgs {
  const E* a = nullptr;
  std::int64_t lda = 0;
  const E* b = nullptr;
  std::int64_t block_stride = 0;
  std::int64_t k_groups = 0;
  float* c = nullptr;
  std::int64_t ldc = 0;
  bool accumulate = false;  // false: C = A B; true: C += A B
};

template <typename E>
inline constexpr int kGroup = sizeof(float) / sizeof(E);

#if defined(ETHEREAL_SIMD_AVX512)

template <typename E>
inline __m512 broadcast_group(const E* p) {
  if constexpr (sizeof(E) == 2) {
    std::int32_t pair;
    std::memcpy(&pair, p, sizeof(pair));
    return _mm512_castsi512_ps(_mm512_set1_epi32(pair));
  } else {
    return _mm512_set1_ps(*p);
  }
}

// acc += a * b for one k group; bf16 operands are reinterpreted as pairs.
template <typename E>
inline __m512 multiply_add(__m512 acc, __m512 a, __m512 b) {
  if constexpr (sizeof(E) == 2) {
#if defined(__AVX512BF16__)
    return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_castps_si512(a),
                            (__m512bh)_mm512_castps_si512(b));
#else
    static_assert(sizeof(E) != 2, "bf16 micro-kernels need AVX512-BF16");
    return acc;
#endif
  } else {
    return _mm512_fmadd_ps(a, b, acc);
  }
}

template <typename E, int Rows, int Blocks>
void gemm_tile(const GemmArgs<E>& args) {
  constexpr int g = kGroup<E>;
  __m512 acc[Rows][Blocks];
#pragma GCC unroll 8
  for (int r = 0; r < Rows; ++r) {
#pragma GCC unroll 8
    for (int n = 0; n < Blocks; ++n) {
      acc[r][n] =
          args.accumulate ? _mm512_loadu_ps(args.c + r * args.ldc + n * 16) : _mm512_setzero_ps();
    }
  }
  const E* b = args.b;
  const E* a = args.a;
  for (std::int64_t kk = 0; kk < args.k_groups; ++kk) {
    __m512 bv[Blocks];
#pragma GCC unroll 8
    for (int n = 0; n < Blocks; ++n) {
      bv[n] = _mm512_castsi512_ps(_mm512_loadu_si512(b + n * args.block_stride + kk * 16 * g));
    }
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r) {
      const __m512 av = broadcast_group(a + r * args.lda + kk * g);
#pragma GCC unroll 8
      for (int n = 0; n < Blocks; ++n) {
        acc[r][n] = multiply_add<E>(acc[r][n], av, bv[n]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < Rows; ++r) {
#pragma GCC unroll 8
    for (int n = 0; n < Blocks; ++n) {
      _mm512_storeu_ps(args.c + r * args.ldc + n * 16, acc[r][n]);
    }
  }
}

#else  // portable f32 fallback; bf16 products are not available

template <typename E, int Rows, int Blocks>
void gemm_tile(const GemmArgs<E>& args) {
  static_assert(sizeof(E) == 4, "bf16 micro-kernels need AVX512-BF16");
  constexpr int kColumns = Blocks * 16;
  float acc[Rows][kColumns];
  for (int r = 0; r < Rows; ++r) {
    for (int j = 0; j < kColumns; ++j) {
      acc[r][j] = args.accumulate ? args.c[r * args.ldc + j] : 0.0f;
    }
  }
  for (std::int64_t kk = 0; kk < args.k_groups; ++kk) {
    for (int r = 0; r < Rows; ++r) {
      const float av = args.a[r * args.lda + kk];
      for (int n = 0; n < Blocks; ++n) {
        const float* bv = args.b + n * args.block_stride + kk * 16;
        for (int c = 0; c < 16; ++c) {
          acc[r][n * 16 + c] += av * bv[c];
        }
      }
    }
  }
  for (int r = 0; r < Rows; ++r) {
    for (int j = 0; j < kColumns; ++j) {
      args.c[r * args.ldc + j] = acc[r][j];
    }
  }
}

#endif

template <typename E>
using GemmTileFn = void (*)(const GemmArgs<E>&);

// The micro-kernel for a tile of `rows` (1..6) rows and `blocks` (1..4) column blocks.
template <typename E>
GemmTileFn<E> gemm_tile_kernel(int rows, int blocks) {
  static constexpr GemmTileFn<E> kTable[kTileRows][kTileBlocks] = {
      {gemm_tile<E, 1, 1>, gemm_tile<E, 1, 2>, gemm_tile<E, 1, 3>, gemm_tile<E, 1, 4>},
      {gemm_tile<E, 2, 1>, gemm_tile<E, 2, 2>, gemm_tile<E, 2, 3>, gemm_tile<E, 2, 4>},
      {gemm_tile<E, 3, 1>, gemm_tile<E, 3, 2>, gemm_tile<E, 3, 3>, gemm_tile<E, 3, 4>},
      {gemm_tile<E, 4, 1>, gemm_tile<E, 4, 2>, gemm_tile<E, 4, 3>, gemm_tile<E, 4, 4>},
      {gemm_tile<E, 5, 1>, gemm_tile<E, 5, 2>, gemm_tile<E, 5, 3>, gemm_tile<E, 5, 4>},
      {gemm_tile<E, 6, 1>, gemm_tile<E, 6, 2>, gemm_tile<E, 6, 3>, gemm_tile<E, 6, 4>},
  };
  return kTable[rows - 1][blocks - 1];
}

// C[rows, 16 * blocks] (+)= A B for any rows and blocks, split into micro-tiles. Column blocks
// are the outer loop so that one B panel stays in L1 while the rows of A pass by.
template <typename E>
void gemm(GemmArgs<E> args, std::int64_t rows, std::int64_t blocks) {
  for (std::int64_t n0 = 0; n0 < blocks; n0 += kTileBlocks) {
    const int n = static_cast<int>(blocks - n0 < kTileBlocks ? blocks - n0 : kTileBlocks);
    for (std::int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
      const int r = static_cast<int>(rows - r0 < kTileRows ? rows - r0 : kTileRows);
      GemmArgs<E> tile = args;
      tile.a = args.a + r0 * args.lda;
      tile.b = args.b + n0 * args.block_stride;
      tile.c = args.c + r0 * args.ldc + n0 * 16;
      gemm_tile_kernel<E>(r, n)(tile);
    }
  }
}

}  // namespace ethereal::cpu::attention_detail
