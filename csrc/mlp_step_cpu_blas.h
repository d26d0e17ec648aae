// The machine side of the CPU fused MLP step (csrc/mlp_step_cpu.cpp): how it runs a matrix
// product, and which instruction set its block code is compiled for.
//
// Products on row-major matrices go to BLAS ?gemm_ directly when torch exports it (MKL builds),
// else to at::mm on views; gemm_par runs one product as fixed tiles in parallel (the wide path,
// mlp_step_cpu_wide.h).
//
// The block code is every FASTGAN_INLINE function of these headers, inlined into the two copies of
// each block function (disc_block_simd / disc_block_base, gen_block_simd / gen_block_base): one
// marked FASTGAN_SIMD_TARGET, one for the build's baseline ISA; cpu_has_simd_target picks at run
// time. The target attribute reaches only what is inlined into the marked copy, so a block helper
// must stay FASTGAN_INLINE wherever it lives (one that is not is compiled for the baseline only).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>

// Fortran BLAS from torch's own BLAS (MKL on x86 wheels); weak, so a build without them still loads.
extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace fastgan {
namespace {

// The block code is compiled twice: for the build's baseline ISA and, on x86, for AVX2 + FMA
// (chosen at run time), so that its elementwise loops use 256-bit vectors.
#define FASTGAN_INLINE inline __attribute__((always_inline))
#if defined(__x86_64__) && defined(__GNUC__)
#define FASTGAN_SIMD_TARGET __attribute__((target("avx2,fma")))
bool cpu_has_simd_target() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#else
#define FASTGAN_SIMD_TARGET
bool cpu_has_simd_target() { return false; }
#endif

// gemm_par's tiles: at most kTiles of at least kMinTile output rows or columns, from the shapes
// alone, so that results stay independent of the thread count.
constexpr int64_t kTiles = 8;
constexpr int64_t kMinTile = 256;  // each tile re-packs the shared operand: keep tiles wide

// ---- products on row-major matrices: C (M x N) = alpha op(A) op(B) + beta C ----------------------
void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
               const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
               const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
               const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
               const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
template <typename T>
bool have_blas() {
  return std::is_same<T, float>::value ? sgemm_ != nullptr : dgemm_ != nullptr;
}

// op(X) of a row-major X stored (rows x cols) with leading dimension ld, as a tensor view.
template <typename T>
at::Tensor view(const T* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor t = at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1}, options);
  return trans ? t.t() : t;
}

template <typename T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (beta == T(0)) for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, T(0));
    return;
  }
  if (have_blas<T>()) {  // column-major BLAS computes C^T = op(B)^T op(A)^T
    const int m = int(N), n = int(M), k = int(K), la = int(lda), lb = int(ldb), lc = int(ldc);
    blas_gemm(tb ? "T" : "N", ta ? "T" : "N", &m, &n, &k, &alpha, B, &lb, A, &la, &beta, C, &lc);
    return;
  }
  at::Tensor a = ta ? view(A, K, M, lda, true) : view(A, M, K, lda, false);
  at::Tensor b = tb ? view(B, N, K, ldb, true) : view(B, K, N, ldb, false);
  at::Tensor c = view(C, M, N, ldc, false);
  if (beta == T(0)) {
    at::mm_out(c, a, b);
    if (alpha != T(1)) c.mul_(alpha);
  } else {
    c.addmm_(a, b, beta, alpha);
  }
}

// gemm split into fixed tiles along the larger of M and N, run in parallel (see kTiles).
template <typename T>
void gemm_par(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
              int64_t ldb, T beta, T* C, int64_t ldc) {
  const bool by_cols = N >= M;
  const int64_t D = by_cols ? N : M;
  const int64_t tile = std::max(kMinTile, (D + kTiles - 1) / kTiles);
  const int64_t ntiles = (D + tile - 1) / tile;
  if (ntiles <= 1) return gemm<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  at::parallel_for(0, ntiles, 1, [&](int64_t tb0, int64_t te) {
    for (int64_t t = tb0; t < te; ++t) {
      const int64_t d0 = t * tile, n = std::min(tile, D - d0);
      if (by_cols)  // columns d0.. of C and of op(B)
        gemm<T>(ta, tb, M, n, K, alpha, A, lda, tb ? B + d0 * ldb : B + d0, ldb, beta, C + d0, ldc);
      else          // rows d0.. of C and of op(A)
        gemm<T>(ta, tb, n, N, K, alpha, ta ? A + d0 : A + d0 * lda, lda, B, ldb, beta, C + d0 * ldc, ldc);
    }
  });
}

template <typename T>
FASTGAN_INLINE void mm(bool par, bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                       int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (par) gemm_par<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else gemm<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace
}  // namespace fastgan
