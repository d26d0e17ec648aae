// CPU kernels of the fused MLP discriminator and generator steps (docs/DESIGN.md section 4; the
// contract is in csrc/bindings.cpp). Equivalent torch, autograd being the specification:
//
//   o = D(x): z_l = h_{l-1} W_l^T + b_l, h_l = leaky_relu(z_l, alpha), o = h_L w_out^T + b_out
//   disc: total = sum_i term_real(r_i) + sum_j term_fake(f_j) + sum_p pw * pen(|dD(x_p)/dx_p|)
//         outputs [loss, penalty, mean r, mean f] and d total / d (W, b, w_out, b_out)
//   gen:  loss = sum_j term(f_j) (or term(r_j - f_j) when paired); outputs [loss, mean f], dloss/dfake
//
// Closed form, per row (m_l = 1 where h_l > 0 else alpha; c = d loss / d o):
//   v_L = m_L * w_out, v_{l-1} = (v_l W_l) * m_{l-1}, g = v_1 W_1        (input gradient)
//   ubar_0 = k(|g|) g, ubar_l = (ubar_{l-1} W_l^T) * m_l               (penalty adjoint)
//   dW_l += v_l^T (c h_{l-1} + ubar_{l-1}), db_l += c v_l, dw_out += c h_L + ubar_L, db_out += c
// Dropout (mask lists given): h_l = leaky(z_l) * d_l with d_l the multiplier tensor of the row's
// block, and every factor m_l above becomes m_l * d_l (applied as (u * d_l) * m_l, autograd's order).
// Each block copies its rows' masks next to its activations (M[l], stacked like H[l]).
// Rows without a penalty carry c in the chain (c v_l is the ordinary backward delta) and use
// h_{l-1} itself as the right operand, so every layer takes ONE weight-gradient product.
//
// Work plan: the batch is cut into blocks of a few hundred rows whose activations fit in L2;
// a block stacks its real, fake and penalty-input rows, so each product covers all of them,
// and every elementwise step (bias, activation, masks, c, penalty factors) runs on the block
// right after its product. Weight gradients accumulate per chunk of consecutive blocks (a fixed
// number of chunks, independent of the thread count, summed in order), so results are bitwise
// reproducible. Wide networks (weights above kWideBytes) instead take blocks of about kWideRows
// stacked rows in turn, add their gradients straight into the outputs, and run each product as
// fixed column (or row) tiles in parallel, and the row-wise elementwise steps split over rows.
// Products go to BLAS ?gemm_ directly when torch exports it (MKL builds), else to at::mm on
// views. Half and bfloat16 are computed in float32.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "loss_terms.h"
#include "mlp_step_contract.h"

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

constexpr int64_t kChunks = 8;                  // weight-gradient partial sums (fixed: determinism)
constexpr int64_t kBlockBytes = 1024 * 1024;    // target per-thread block workspace (about L2)
constexpr int64_t kMinBlockRows = 32;
// Wide networks: weights above kWideBytes would make kChunks partial sums costly (memory, and
// their sum) and row blocks of about kBlockBytes too short for efficient products. They take one
// accumulator (the outputs themselves, blocks added in order), blocks of about kWideRows stacked
// rows, and every product split into fixed tiles of output rows or columns (at most kTiles of at
// least kMinTile, each one BLAS call) run in parallel: tiles depend on the shapes alone, so
// results stay independent of the thread count. Bias and w_out gradients are then products too
// (float accumulation, like the weights), instead of the narrow path's double row sums.
constexpr int64_t kWideBytes = 512 * 1024;
constexpr int64_t kWideRows = 384;
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

// ---- the network as raw pointers --------------------------------------------------------------
template <typename T>
struct Net {
  int64_t L = 0;
  std::vector<int64_t> width;  // width[0] = K (packed row), width[l] = H_l
  std::vector<const T*> W;     // W[l] (l = 1..L): (H_l, H_{l-1}); W[0] unused
  std::vector<const T*> b;     // b[l] or nullptr
  const T* w_out = nullptr;    // (H_L,)
  T b_out = T(0);
  T alpha = T(0);
  T one = T(1);                // see bias_leaky
  T zero = T(0);               // see combine
  int64_t max_width = 0;       // max over H_1..H_L
  bool wide = false;           // weights above kWideBytes: tiled parallel products (see kWideBytes)
};

// Parameter-gradient layout of one chunk's partial sums: weight matrices in a T slot (products
// accumulate there), vectors (biases, w_out, b_out: row sums) in a double slot.
struct GradLayout {
  std::vector<int64_t> W, b;  // offsets (index l = 1..L) into the T / the double slot
  int64_t w_out = 0, b_out = 0, size = 0, vsize = 0;
};

template <typename T>
GradLayout grad_layout(const Net<T>& net, bool has_bias) {
  GradLayout g;
  g.W.assign(net.L + 1, 0);
  g.b.assign(net.L + 1, -1);
  for (int64_t l = 1; l <= net.L; ++l) { g.W[l] = g.size; g.size += net.width[l] * net.width[l - 1]; }
  if (has_bias) for (int64_t l = 1; l <= net.L; ++l) { g.b[l] = g.vsize; g.vsize += net.width[l]; }
  g.w_out = g.vsize; g.vsize += net.width[net.L];
  g.b_out = g.vsize; g.vsize += 1;
  return g;
}

// Per-thread block buffers for S stacked rows.
template <typename T>
struct Workspace {
  std::vector<T> buf;
  std::vector<T*> H, V;  // H[0..L] (S x width[l]; H[0] holds the input rows), V[1..L]
  T *G = nullptr, *UB0 = nullptr, *UB1 = nullptr, *o = nullptr, *c = nullptr;
  std::vector<T> mbuf;   // dropout only: M[1..L] (S x width[l]), the block's stacked masks
  std::vector<T*> M;

  static int64_t elems_per_row(const Net<T>& net) {
    int64_t e = 2 * net.width[0] + 2 * net.max_width + 2;  // H[0], G, UB0/1, o, c
    for (int64_t l = 1; l <= net.L; ++l) e += 2 * net.width[l];
    return e;
  }
  // S stacked rows, of which at most P carry a penalty (the UB buffers hold only those)
  Workspace(const Net<T>& net, int64_t S, int64_t P, bool dropout = false)
      : buf(size_t(S * (elems_per_row(net) - 2 * net.max_width) + 2 * P * net.max_width)), H(net.L + 1),
        V(net.L + 1), M(net.L + 1, nullptr) {
    if (dropout) {
      int64_t n = 0;
      for (int64_t l = 1; l <= net.L; ++l) n += S * net.width[l];
      mbuf.resize(size_t(n));
      T* q = mbuf.data();
      for (int64_t l = 1; l <= net.L; ++l) { M[l] = q; q += S * net.width[l]; }
    }
    T* p = buf.data();
    auto take = [&](int64_t n) { T* q = p; p += n; return q; };
    for (int64_t l = 0; l <= net.L; ++l) H[l] = take(S * net.width[l]);
    for (int64_t l = 1; l <= net.L; ++l) V[l] = take(S * net.width[l]);
    G = take(S * net.width[0]);
    UB0 = take(P * net.max_width);
    UB1 = take(P * net.max_width);
    o = take(S);
    c = take(S);
  }
};

// Rows of one block, stacked: [0, n[0]) real, then n[1] fake, then n[2] penalty-input rows.
// Dropout: mk[s] (nullptr: none) holds side s's mask base pointers by layer (index 1..L), whose
// rows for this block start at row r0[s].
template <typename T>
struct Block {
  const T* x[3];
  int64_t n[3];
  const T* const* mk[3] = {nullptr, nullptr, nullptr};
  int64_t r0[3] = {0, 0, 0};
  int64_t rows() const { return n[0] + n[1] + n[2]; }
};

// Runs BODY over rows [a, b) of [0, n): split in parallel when `par` (wide networks: row-wise
// independent work only, so results do not depend on the split), else one pass inline. The
// parallel body is never inlined, so it is one compiled function (baseline ISA, no FMA
// contraction) whichever thread count at::parallel_for runs it on.
#define FASTGAN_FOR_ROWS(par, n, w, a, b, BODY)                                                   \
  do {                                                                                          \
    if (par) {                                                                                  \
      at::parallel_for(0, (n), std::max<int64_t>(1, 16384 / std::max<int64_t>(1, (w))),          \
                       [&](int64_t a, int64_t b) __attribute__((noinline)) { BODY; });          \
    } else {                                                                                    \
      const int64_t a = 0, b = (n);                                                             \
      BODY;                                                                                     \
    }                                                                                           \
  } while (0)

// ---- elementwise steps (one pass over a block in cache each) ------------------------------------
// LeakyReLU and its mask as multiplies by a selected factor (1 or alpha): torch's exact results,
// and branch-free loops that vectorise. `one` is 1 read at run time, so that the compiler does not
// turn "times 1" into a conditional multiply, which IEEE trapping rules keep from vectorising.
template <typename T>
FASTGAN_INLINE void bias_leaky(T* __restrict__ h, int64_t rows, int64_t w, const T* __restrict__ bias, T one,
                               T alpha) {
  for (int64_t i = 0; i < rows; ++i) {
    T* __restrict__ r = h + i * w;
    if (bias) {
      for (int64_t j = 0; j < w; ++j) { const T z = r[j] + bias[j]; r[j] = z * (z > T(0) ? one : alpha); }
    } else {
      for (int64_t j = 0; j < w; ++j) { const T z = r[j]; r[j] = z * (z > T(0) ? one : alpha); }
    }
  }
}

// u *= m where m = 1 if h > 0 else alpha (h > 0 exactly when z > 0, as alpha >= 0); with dropout
// multipliers d (non-null) u = (u * d) * m (h = 0 where d = 0, and then u * d = 0 already).
template <typename T>
FASTGAN_INLINE void apply_mask(T* __restrict__ u, const T* __restrict__ h, int64_t n, T one, T alpha,
                               const T* __restrict__ d = nullptr) {
  if (d) {
    for (int64_t i = 0; i < n; ++i) u[i] = (u[i] * d[i]) * (h[i] > T(0) ? one : alpha);
    return;
  }
  for (int64_t i = 0; i < n; ++i) u[i] *= h[i] > T(0) ? one : alpha;
}

// h *= d (dropout after the activation)
template <typename T>
FASTGAN_INLINE void apply_drop(T* __restrict__ h, const T* __restrict__ d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) h[i] *= d[i];
}

// The weight-gradient operand of a penalised row, in place of h_i: for W_l (h = h_{l-1}, ZERO_PATH)
// c_i h_i + ubar_i plus autograd's 0 * h_i (the zero double backward of the LeakyReLU masks; 0 for a
// finite h, NaN for an infinite one, as in the reference; `zero` is 0 read at run time, like
// Net::one); for w_out (h = h_L) c_i h_i + ubar_i, or ubar_i alone on penalty-input rows (no loss
// term: the reference never multiplies their h_L, so an infinite one leaves no NaN).
template <typename T, bool ZERO_PATH>
FASTGAN_INLINE void combine(T* __restrict__ h, const T* __restrict__ c, const T* __restrict__ ubar, int64_t rows,
                            int64_t w, T zero, bool no_loss = false) {
  for (int64_t i = 0; i < rows; ++i) {
    const T ci = c[i];
    T* r = h + i * w;
    const T* u = ubar + i * w;
    if (ZERO_PATH) {
      for (int64_t j = 0; j < w; ++j) r[j] = ci * r[j] + u[j] + zero * r[j];
    } else if (no_loss) {
      for (int64_t j = 0; j < w; ++j) r[j] = u[j];
    } else {
      for (int64_t j = 0; j < w; ++j) r[j] = ci * r[j] + u[j];
    }
  }
}

// o_i = h_L,i . w_out + b_out for rows [a, b)
template <typename T>
FASTGAN_INLINE void logits(const Net<T>& net, Workspace<T>& ws, int64_t a, int64_t b) {
  const int64_t wl = net.width[net.L];
  for (int64_t i = a; i < b; ++i) {
    const T* h = ws.H[net.L] + i * wl;
    T acc = T(0);
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < wl; ++j) acc += h[j] * net.w_out[j];
    ws.o[i] = acc + net.b_out;
  }
}

// Forward of all S stacked rows: H[0] <- inputs, H[l] <- leaky(H[l-1] W_l^T + b_l), o <- logits.
template <typename T>
FASTGAN_INLINE void forward(const Net<T>& net, Workspace<T>& ws, const Block<T>& blk) {
  const int64_t S = blk.rows(), K = net.width[0];
  int64_t r0 = 0;
  for (int s = 0; s < 3; ++s) {
    if (blk.n[s]) std::memcpy(ws.H[0] + r0 * K, blk.x[s], sizeof(T) * blk.n[s] * K);
    r0 += blk.n[s];
  }
  const bool drop = blk.mk[0] != nullptr || blk.mk[1] != nullptr;
  if (drop) {  // the block's masks, stacked like its rows
    for (int64_t l = 1; l <= net.L; ++l) {
      const int64_t wo = net.width[l];
      int64_t q = 0;
      for (int s = 0; s < 3; ++s) {
        if (blk.n[s]) std::memcpy(ws.M[l] + q * wo, blk.mk[s][l] + blk.r0[s] * wo, sizeof(T) * blk.n[s] * wo);
        q += blk.n[s];
      }
    }
  }
  for (int64_t l = 1; l <= net.L; ++l) {
    const int64_t wi = net.width[l - 1], wo = net.width[l];
    mm<T>(net.wide, false, true, S, wo, wi, T(1), ws.H[l - 1], wi, net.W[l], wi, T(0), ws.H[l], wo);
    FASTGAN_FOR_ROWS(net.wide, S, wo, a, b, {
      bias_leaky(ws.H[l] + a * wo, b - a, wo, net.b[l], net.one, net.alpha);
      if (drop) apply_drop(ws.H[l] + a * wo, ws.M[l] + a * wo, (b - a) * wo);
    });
  }
  const int64_t wl = net.width[net.L];
  FASTGAN_FOR_ROWS(net.wide, S, wl, a, b, logits(net, ws, a, b));
}

// V chain over rows [r0, r1): V[L] = s_i m_L w_out, V[l-1] = (V[l] W_l) * m_{l-1}, with s_i = c_i,
// or 1 on the penalised rows [p0, p1).
template <typename T>
FASTGAN_INLINE void v_top(const Net<T>& net, Workspace<T>& ws, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
  const int64_t wl = net.width[net.L];
  for (int64_t i = r0; i < r1; ++i) {
    const T s = (i >= p0 && i < p1) ? T(1) : ws.c[i];
    const T sa = s * net.alpha;
    const T* __restrict__ h = ws.H[net.L] + i * wl;
    T* __restrict__ v = ws.V[net.L] + i * wl;
    if (ws.M[net.L]) {  // dropout: ((s w) d) m, autograd's order
      const T* __restrict__ d = ws.M[net.L] + i * wl;
      for (int64_t j = 0; j < wl; ++j) v[j] = ((s * net.w_out[j]) * d[j]) * (h[j] > T(0) ? net.one : net.alpha);
      continue;
    }
    for (int64_t j = 0; j < wl; ++j) v[j] = (h[j] > T(0) ? s : sa) * net.w_out[j];
  }
}
template <typename T>
FASTGAN_INLINE void v_chain(const Net<T>& net, Workspace<T>& ws, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
  const int64_t L = net.L, wl = net.width[L], n = r1 - r0;
  FASTGAN_FOR_ROWS(net.wide, n, wl, a, b, v_top(net, ws, r0 + a, r0 + b, p0, p1));
  for (int64_t l = L; l >= 2; --l) {
    const int64_t wo = net.width[l], wi = net.width[l - 1];
    mm<T>(net.wide, false, false, n, wi, wo, T(1), ws.V[l] + r0 * wo, wo, net.W[l], wi, T(0), ws.V[l - 1] + r0 * wi, wi);
    FASTGAN_FOR_ROWS(net.wide, n, wi, a, b,
                     apply_mask(ws.V[l - 1] + (r0 + a) * wi, ws.H[l - 1] + (r0 + a) * wi, (b - a) * wi, net.one,
                                net.alpha, ws.M[l - 1] ? ws.M[l - 1] + (r0 + a) * wi : nullptr));
  }
}

// ---- arguments: parsed and checked by mlp_step_contract.h -----------------------------------
using PenaltySpec = contract::Penalty;

// Contiguous copies (kept alive by the caller) and the raw view of the network.
template <typename T>
Net<T> make_net(std::vector<at::Tensor>& keep, at::TensorList weights, at::TensorList biases,
                const at::Tensor& w_out, const c10::optional<at::Tensor>& b_out, double negative_slope) {
  Net<T> net;
  net.L = int64_t(weights.size());
  net.width.push_back(weights[0].size(1));
  net.W.push_back(nullptr);
  net.b.push_back(nullptr);
  for (int64_t l = 0; l < net.L; ++l) {
    keep.push_back(weights[l].contiguous());
    net.W.push_back(keep.back().const_data_ptr<T>());
    net.width.push_back(weights[l].size(0));
    net.max_width = std::max(net.max_width, weights[l].size(0));
    if (!biases.empty()) {
      keep.push_back(biases[l].contiguous());
      net.b.push_back(keep.back().const_data_ptr<T>());
    } else {
      net.b.push_back(nullptr);
    }
  }
  keep.push_back(w_out.contiguous());
  net.w_out = keep.back().const_data_ptr<T>();
  net.b_out = b_out.has_value() ? b_out->item<T>() : T(0);
  net.alpha = T(negative_slope);
  int64_t welems = 0;
  for (int64_t l = 1; l <= net.L; ++l) welems += net.width[l] * net.width[l - 1];
  net.wide = welems * int64_t(sizeof(T)) > kWideBytes;
  return net;
}

// Rows per side in one block, from the shapes alone (never the thread count, so that results are
// reproducible): blocks whose buffers take about kBlockBytes, but at least kChunks blocks of at
// least kMinBlockRows rows when the batch allows, so that small batches still spread over threads.
template <typename T>
int64_t block_rows(const Net<T>& net, int sides, int64_t rows) {
  if (net.wide) {  // about kWideRows stacked rows, balanced
    const int64_t fit = std::max<int64_t>(1, kWideRows / sides);
    const int64_t nblocks = (rows + fit - 1) / fit;
    return (rows + nblocks - 1) / nblocks;
  }
  const int64_t per_row = Workspace<T>::elems_per_row(net) * int64_t(sizeof(T)) * sides;
  const int64_t fit = std::max<int64_t>(8, kBlockBytes / per_row);
  const int64_t nblocks = std::max((rows + fit - 1) / fit, std::min(kChunks, rows / kMinBlockRows));
  return std::max<int64_t>(1, (rows + nblocks - 1) / nblocks);
}

// ---- the discriminator step ---------------------------------------------------------------------
template <typename T>
struct DiscJob {
  const Net<T>* net;
  const T* x[3];      // real, fake, penalty-input rows (K wide)
  int64_t N[3];       // their row counts (0: none)
  const Term* t_real; // nullptr: no term
  const Term* t_fake;
  bool paired, has_bias;
  PenaltySpec pen;
  int64_t Rb;         // rows per side in a block
  GradLayout lay;
  const T* const* mk[3] = {nullptr, nullptr, nullptr};  // dropout: per side, mask pointers by layer (1..L)
};

// One block: forward, c, the V chain, the penalty adjoint, and its share of every gradient,
// added to the chunk's accumulators (dW[l]: weight matrices, vslot: vectors, st: stats).
template <typename T>
FASTGAN_INLINE void disc_block(const DiscJob<T>& job, Workspace<T>& ws, int64_t bi, T* const* dW, double* vslot,
                               double* st) {
  const Net<T>& net = *job.net;
  const GradLayout& lay = job.lay;
  const int64_t K = net.width[0], L = net.L, wl = net.width[L], Rb = job.Rb;
  Block<T> blk;
  for (int s = 0; s < 3; ++s) {
    blk.n[s] = std::clamp<int64_t>(job.N[s] - bi * Rb, 0, Rb);
    blk.x[s] = blk.n[s] ? job.x[s] + bi * Rb * K : nullptr;
    blk.mk[s] = job.mk[s];
    blk.r0[s] = bi * Rb;
  }
  const int64_t S = blk.rows(), nr = blk.n[0], nf = blk.n[1];
  forward(net, ws, blk);
  // loss derivatives c and the stats
  const T* o = ws.o;
  T* c = ws.c;
  double loss = 0, sum_r = 0, sum_f = 0;
  for (int64_t i = 0; i < nr; ++i) sum_r += double(o[i]);
  for (int64_t i = nr; i < nr + nf; ++i) sum_f += double(o[i]);
  if (job.paired) {
    for (int64_t i = 0; i < nr; ++i) {
      const T d = o[i] - o[nr + i];
      loss += double(term_value<T>(*job.t_real, d));
      c[i] = term_derivative<T>(*job.t_real, d);
      c[nr + i] = -c[i];
    }
  } else {
    for (int64_t i = 0; i < nr + nf; ++i) {
      const Term* t = i < nr ? job.t_real : job.t_fake;
      if (t) {
        loss += double(term_value<T>(*t, o[i]));
        c[i] = term_derivative<T>(*t, o[i]);
      } else {
        c[i] = T(0);
      }
    }
  }
  for (int64_t i = nr + nf; i < S; ++i) c[i] = T(0);
  // penalised rows [p0, p1)
  const int side = job.pen.side;
  const int64_t p0 = side == 1 ? nr : side == 2 ? nr + nf : 0;
  const int64_t p1 = side == 0 ? nr : side == 1 ? nr + nf : side == 2 ? S : 0;
  const int64_t np = p1 - p0;
  v_chain(net, ws, 0, S, p0, p1);
  double pen_sum = 0;
  if (np > 0) {
    // g = v_1 W_1, then ubar_0 = k(|g|) g in place
    mm<T>(net.wide, false, false, np, K, net.width[1], T(1), ws.V[1] + p0 * net.width[1], net.width[1], net.W[1], K, T(0),
            ws.G, K);
    for (int64_t i = 0; i < np; ++i) {
      T* g = ws.G + i * K;
      double sq = 0;
#pragma omp simd reduction(+ : sq)
      for (int64_t j = 0; j < K; ++j) sq += double(g[j]) * double(g[j]);
      sq = sq_norm_as_torch<T>(sq);
      pen_sum += penalty_value<double>(job.pen.kind, sq, job.pen.weight, job.pen.center);
      const T k = T(penalty_grad_factor<double>(job.pen.kind, sq, job.pen.weight, job.pen.center));
      for (int64_t j = 0; j < K; ++j) g[j] *= k;
    }
    T* ub_prev = ws.G;
    for (int64_t l = 1; l <= L; ++l) {
      const int64_t wi = net.width[l - 1], wo = net.width[l];
      T* ub = (l & 1) ? ws.UB0 : ws.UB1;
      mm<T>(net.wide, false, true, np, wo, wi, T(1), ub_prev, wi, net.W[l], wi, T(0), ub, wo);
      FASTGAN_FOR_ROWS(net.wide, np, wo + wi, a, b, {
        apply_mask(ub + a * wo, ws.H[l] + (p0 + a) * wo, (b - a) * wo, net.one, net.alpha,
                   ws.M[l] ? ws.M[l] + (p0 + a) * wo : nullptr);
        (combine<T, true>)(ws.H[l - 1] + (p0 + a) * wi, c + p0 + a, ub_prev + a * wi, b - a, wi, net.zero);
      });
      ub_prev = ub;
    }
    FASTGAN_FOR_ROWS(net.wide, np, wl, a, b, (combine<T, false>)(ws.H[L] + (p0 + a) * wl, c + p0 + a, ub_prev + a * wl, b - a, wl, net.zero,
                                                        side == 2));
  }
  // weight gradients: one product per layer over all stacked rows
  if (net.wide) {  // vectors too as products, into dW[L + l] (db_l) and dW[0] (dw_out)
    T* s = ws.o;     // the logits are spent: row factors of db (c on penalised rows, else 1)
    T* s2 = ws.G;    // and of dw_out (1 on penalised rows, else c); G's K >= 1 columns per row
    double dbo = 0;
    for (int64_t i = 0; i < S; ++i) {
      const bool pr = i >= p0 && i < p1;
      s[i] = pr ? c[i] : T(1);
      dbo += double(c[i]);
    }
    for (int64_t i = 0; i < S; ++i) s2[i] = (i >= p0 && i < p1) ? T(1) : c[i];
    for (int64_t l = 1; l <= L; ++l) {
      const int64_t wi = net.width[l - 1], wo = net.width[l];
      mm<T>(true, true, false, wo, wi, S, T(1), ws.V[l], wo, ws.H[l - 1], wi, T(1), dW[l], wi);
      if (job.has_bias) mm<T>(true, true, false, wo, 1, S, T(1), ws.V[l], wo, s, 1, T(1), dW[L + l], 1);
    }
    mm<T>(true, true, false, wl, 1, S, T(1), ws.H[L], wl, s2, 1, T(1), dW[0], 1);
    vslot[lay.b_out] += dbo;
    st[0] += loss;
    st[1] += pen_sum;
    st[2] += sum_r;
    st[3] += sum_f;
    return;
  }
  for (int64_t l = 1; l <= L; ++l) {
    const int64_t wi = net.width[l - 1], wo = net.width[l];
    mm<T>(net.wide, true, false, wo, wi, S, T(1), ws.V[l], wo, ws.H[l - 1], wi, T(1), dW[l], wi);
    if (job.has_bias) {
      double* db = vslot + lay.b[l];
      for (int64_t i = 0; i < S; ++i) {
        const T s = (i >= p0 && i < p1) ? c[i] : T(1);
        const T* v = ws.V[l] + i * wo;
        for (int64_t j = 0; j < wo; ++j) db[j] += double(s * v[j]);
      }
    }
  }
  double* dwo = vslot + lay.w_out;
  double dbo = 0;
  for (int64_t i = 0; i < S; ++i) {
    const T s = (i >= p0 && i < p1) ? T(1) : c[i];
    const T* h = ws.H[L] + i * wl;
    for (int64_t j = 0; j < wl; ++j) dwo[j] += double(s * h[j]);
    dbo += double(c[i]);
  }
  vslot[lay.b_out] += dbo;
  st[0] += loss;
  st[1] += pen_sum;
  st[2] += sum_r;
  st[3] += sum_f;
}

template <typename T>
FASTGAN_SIMD_TARGET void disc_block_simd(const DiscJob<T>& job, Workspace<T>& ws, int64_t bi, T* const* dW,
                                         double* vslot, double* st) {
  disc_block(job, ws, bi, dW, vslot, st);
}
template <typename T>
void disc_block_base(const DiscJob<T>& job, Workspace<T>& ws, int64_t bi, T* const* dW, double* vslot,
                     double* st) {
  disc_block(job, ws, bi, dW, vslot, st);
}

template <typename T>
void disc_kernel(const DiscJob<T>& job, double stats[4], std::vector<T*>& grads) {
  const Net<T>& net = *job.net;
  const GradLayout& lay = job.lay;
  const int sides = job.pen.side == 2 ? 3 : 2;
  const int64_t nblocks = (std::max({job.N[0], job.N[1], job.N[2]}) + job.Rb - 1) / job.Rb;
  // wide: one accumulator, the outputs themselves (blocks in order, products parallel inside)
  const int64_t nchunks = net.wide ? 1 : std::min(nblocks, kChunks);
  std::vector<T> slots(size_t(net.wide ? 0 : nchunks * lay.size), T(0));
  // per chunk: dW[l] weight matrices; wide only: dW[L + l] biases, dW[0] w_out (the outputs, zeroed)
  const int64_t np = 2 * net.L + 1;
  std::vector<T*> dW(size_t(nchunks * np), nullptr);
  for (int64_t ch = 0; ch < nchunks; ++ch)
    for (int64_t l = 1; l <= net.L; ++l) dW[ch * np + l] = net.wide ? grads[l - 1] : slots.data() + ch * lay.size + lay.W[l];
  if (net.wide) {
    for (int64_t l = 1; l <= net.L; ++l) {
      std::fill(grads[l - 1], grads[l - 1] + net.width[l] * net.width[l - 1], T(0));
      if (job.has_bias) {
        dW[net.L + l] = grads[net.L + l - 1];
        std::fill(dW[net.L + l], dW[net.L + l] + net.width[l], T(0));
      }
    }
    dW[0] = grads[(job.has_bias ? 2 : 1) * net.L];
    std::fill(dW[0], dW[0] + net.width[net.L], T(0));
  }
  std::vector<double> vslots(size_t(nchunks * lay.vsize), 0.0);
  std::vector<double> chunk_stats(size_t(nchunks * 4), 0.0);
  const bool simd = cpu_has_simd_target();

  auto run_chunks = [&](int64_t cb, int64_t ce) {
    Workspace<T> ws(net, sides * job.Rb, job.pen.side == -1 ? 0 : job.Rb, job.mk[0] != nullptr);
    for (int64_t ch = cb; ch < ce; ++ch) {
      T* const* dw = dW.data() + ch * np;
      double* vslot = vslots.data() + ch * lay.vsize;
      double* st = chunk_stats.data() + ch * 4;
      for (int64_t bi = ch * nblocks / nchunks; bi < (ch + 1) * nblocks / nchunks; ++bi) {
        if (simd) disc_block_simd(job, ws, bi, dw, vslot, st);
        else disc_block_base(job, ws, bi, dw, vslot, st);
      }
    }
  };
  if (net.wide) run_chunks(0, 1);
  else at::parallel_for(0, nchunks, 1, run_chunks);

  // fixed-order sums over the chunks
  for (int k = 0; k < 4; ++k) {
    stats[k] = 0;
    for (int64_t ch = 0; ch < nchunks; ++ch) stats[k] += chunk_stats[ch * 4 + k];
  }
  auto sum_into = [&](T* out, int64_t off, int64_t n) {
    at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) {
        T acc = slots[off + j];
        for (int64_t ch = 1; ch < nchunks; ++ch) acc += slots[ch * lay.size + off + j];
        out[j] = acc;
      }
    });
  };
  auto vsum_into = [&](T* out, int64_t off, int64_t n) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t ch = 0; ch < nchunks; ++ch) acc += vslots[ch * lay.vsize + off + j];
      out[j] = T(acc);
    }
  };
  size_t gi = 0;
  if (!net.wide) {
    for (int64_t l = 1; l <= net.L; ++l) sum_into(grads[gi++], lay.W[l], net.width[l] * net.width[l - 1]);
    if (job.has_bias) for (int64_t l = 1; l <= net.L; ++l) vsum_into(grads[gi++], lay.b[l], net.width[l]);
    vsum_into(grads[gi++], lay.w_out, net.width[net.L]);
  } else {
    gi = size_t((job.has_bias ? 2 : 1) * net.L + 1);
  }
  if (gi < grads.size()) vsum_into(grads[gi++], lay.b_out, 1);
}

std::vector<at::Tensor> mlp_disc_step_cpu(const at::Tensor& real_in, const at::Tensor& fake_in,
                                          const c10::optional<at::Tensor>& penalty_input, at::TensorList weights,
                                          at::TensorList biases, const at::Tensor& w_out,
                                          const c10::optional<at::Tensor>& b_out, double negative_slope,
                                          c10::ArrayRef<double> term_real, c10::ArrayRef<double> term_fake,
                                          bool paired, int64_t penalty_side, int64_t penalty_kind,
                                          double penalty_weight, double penalty_center, bool allow_tf32,
                                          at::TensorList masks_real, at::TensorList masks_fake,
                                          at::TensorList masks_penalty, c10::string_view path, bool tensor_cores) {
  (void)allow_tf32, (void)tensor_cores;  // CPU products are always full precision
  contract::check_single_path(path, at::kCPU);
  const contract::DiscArgs args = contract::parse_disc(real_in, fake_in, penalty_input, weights, biases, w_out, b_out,
                                                       negative_slope, term_real, term_fake, paired, penalty_side,
                                                       penalty_kind, penalty_weight, penalty_center, at::kCPU);
  const bool dropout = contract::parse_disc_masks(masks_real, masks_fake, masks_penalty, real_in, fake_in,
                                                  penalty_input, args.net, at::kCPU);
  const Term tr = args.term_real, tf = args.term_fake;
  const bool has_tr = args.has_real, has_tf = args.has_fake;
  const PenaltySpec pen = args.pen;

  const at::ScalarType dtype = real_in.scalar_type();
  const bool upcast = dtype == at::kHalf || dtype == at::kBFloat16;
  auto prep = [&](const at::Tensor& t) { return (upcast ? t.to(at::kFloat) : t).contiguous(); };
  auto prep_list = [&](at::TensorList ts) {
    std::vector<at::Tensor> v;
    for (const auto& t : ts) v.push_back(prep(t));
    return v;
  };
  const at::Tensor real = prep(real_in), fake = prep(fake_in);
  const at::Tensor pin = penalty_side == 2 ? prep(*penalty_input) : at::Tensor();
  const std::vector<at::Tensor> ws_ = prep_list(weights), bs_ = prep_list(biases);
  const at::Tensor wo_ = prep(w_out);
  const c10::optional<at::Tensor> bo_ = b_out.has_value() ? c10::optional<at::Tensor>(prep(*b_out)) : c10::nullopt;
  std::vector<at::Tensor> mks[3];
  if (dropout) {
    mks[0] = prep_list(masks_real);
    mks[1] = prep_list(masks_fake);
    mks[2] = prep_list(masks_penalty);
  }

  std::vector<at::Tensor> outs;
  for (const auto& w : ws_) outs.push_back(at::empty_like(w));
  for (const auto& b : bs_) outs.push_back(at::empty_like(b));
  outs.push_back(at::empty_like(wo_));
  if (bo_.has_value()) outs.push_back(at::empty_like(*bo_));
  double stats[4];

  AT_DISPATCH_FLOATING_TYPES(real.scalar_type(), "mlp_disc_step_cpu", [&] {
    std::vector<at::Tensor> keep;
    const Net<scalar_t> net = make_net<scalar_t>(keep, ws_, bs_, wo_, bo_, negative_slope);
    DiscJob<scalar_t> job{&net,
                          {real.const_data_ptr<scalar_t>(), fake.const_data_ptr<scalar_t>(),
                           pin.defined() ? pin.const_data_ptr<scalar_t>() : nullptr},
                          {real.size(0), fake.size(0), pin.defined() ? pin.size(0) : 0},
                          has_tr ? &tr : nullptr, has_tf ? &tf : nullptr, paired, !bs_.empty(), pen,
                          block_rows(net, penalty_side == 2 ? 3 : 2,
                                     std::max({real.size(0), fake.size(0), pin.defined() ? pin.size(0) : 0})),
                          grad_layout(net, !bs_.empty())};
    std::vector<const scalar_t*> mptr[3];
    for (int s = 0; s < 3 && dropout; ++s) {
      if (mks[s].empty()) continue;
      mptr[s].push_back(nullptr);
      for (const auto& m : mks[s]) mptr[s].push_back(m.const_data_ptr<scalar_t>());
      job.mk[s] = mptr[s].data();
    }
    std::vector<scalar_t*> grads;
    for (auto& t : outs) grads.push_back(t.mutable_data_ptr<scalar_t>());
    disc_kernel<scalar_t>(job, stats, grads);
  });

  at::Tensor st = at::empty({4}, real_in.options().dtype(at::kDouble));
  double* sp = st.mutable_data_ptr<double>();
  sp[0] = stats[0];
  sp[1] = stats[1];
  sp[2] = stats[2] / double(real.size(0));
  sp[3] = stats[3] / double(fake.size(0));
  std::vector<at::Tensor> result{st.to(dtype)};
  for (auto& t : outs) result.push_back(upcast ? t.to(dtype) : t);
  return result;
}

// ---- the generator step --------------------------------------------------------------------------
template <typename T>
struct GenJob {
  const Net<T>* net;
  const T* fake;
  const T* real;  // paired only
  int64_t N;
  const Term* term;
  bool paired;
  int64_t Rb;
  T* dfake;       // (N, K) output
  const T* const* mk_fake = nullptr;  // dropout: mask pointers by layer (1..L)
  const T* const* mk_real = nullptr;  // (paired)
};

// One block: forward (real rows too when paired), c, the V chain scaled by c, dfake = c g.
template <typename T>
FASTGAN_INLINE void gen_block(const GenJob<T>& job, Workspace<T>& ws, int64_t bi, double* st) {
  const Net<T>& net = *job.net;
  const int64_t K = net.width[0], Rb = job.Rb, n = std::min(Rb, job.N - bi * Rb);
  Block<T> blk{{job.paired ? job.real + bi * Rb * K : nullptr, job.fake + bi * Rb * K, nullptr},
               {job.paired ? n : 0, n, 0},
               {job.mk_real, job.mk_fake, nullptr},
               {bi * Rb, bi * Rb, 0}};
  forward(net, ws, blk);
  const int64_t f0 = blk.n[0], S = blk.rows();
  double loss = 0, sum_f = 0;
  for (int64_t i = f0; i < S; ++i) {
    const T f = ws.o[i];
    sum_f += double(f);
    if (!job.term) {
      ws.c[i] = T(0);
    } else if (job.paired) {
      const T d = ws.o[i - f0] - f;
      loss += double(term_value<T>(*job.term, d));
      ws.c[i] = -term_derivative<T>(*job.term, d);
    } else {
      loss += double(term_value<T>(*job.term, f));
      ws.c[i] = term_derivative<T>(*job.term, f);
    }
  }
  v_chain(net, ws, f0, S, 0, 0);
  mm<T>(net.wide, false, false, n, K, net.width[1], T(1), ws.V[1] + f0 * net.width[1], net.width[1], net.W[1], K, T(0),
          job.dfake + bi * Rb * K, K);
  st[0] = loss;
  st[1] = sum_f;
}

template <typename T>
FASTGAN_SIMD_TARGET void gen_block_simd(const GenJob<T>& job, Workspace<T>& ws, int64_t bi, double* st) {
  gen_block(job, ws, bi, st);
}
template <typename T>
void gen_block_base(const GenJob<T>& job, Workspace<T>& ws, int64_t bi, double* st) {
  gen_block(job, ws, bi, st);
}

std::vector<at::Tensor> mlp_gen_step_cpu(const at::Tensor& fake_in, const c10::optional<at::Tensor>& real_in,
                                         at::TensorList weights, at::TensorList biases, const at::Tensor& w_out,
                                         const c10::optional<at::Tensor>& b_out, double negative_slope,
                                         c10::ArrayRef<double> term, bool paired, bool allow_tf32,
                                         at::TensorList masks_fake, at::TensorList masks_real,
                                         c10::string_view path, bool tensor_cores) {
  (void)allow_tf32, (void)tensor_cores;
  contract::check_single_path(path, at::kCPU);
  const contract::GenArgs args =
      contract::parse_gen(fake_in, real_in, weights, biases, w_out, b_out, negative_slope, term, paired, at::kCPU);
  const bool dropout = contract::parse_gen_masks(masks_fake, masks_real, fake_in, real_in, paired, args.net, at::kCPU);
  const Term t = args.term;
  const bool has_t = args.has_term;
  const at::ScalarType dtype = fake_in.scalar_type();
  const bool upcast = dtype == at::kHalf || dtype == at::kBFloat16;
  auto prep = [&](const at::Tensor& x) { return (upcast ? x.to(at::kFloat) : x).contiguous(); };
  const at::Tensor fake = prep(fake_in);
  const at::Tensor real = paired ? prep(*real_in) : at::Tensor();
  std::vector<at::Tensor> ws_, bs_;
  for (const auto& w : weights) ws_.push_back(prep(w));
  for (const auto& b : biases) bs_.push_back(prep(b));
  const at::Tensor wo_ = prep(w_out);
  const c10::optional<at::Tensor> bo_ = b_out.has_value() ? c10::optional<at::Tensor>(prep(*b_out)) : c10::nullopt;
  at::Tensor dfake = at::empty_like(fake);
  double loss = 0, sum_f = 0;
  std::vector<at::Tensor> mks[2];  // fake, real
  if (dropout) {
    for (const auto& m : masks_fake) mks[0].push_back(prep(m));
    for (const auto& m : masks_real) mks[1].push_back(prep(m));
  }

  AT_DISPATCH_FLOATING_TYPES(fake.scalar_type(), "mlp_gen_step_cpu", [&] {
    using T = scalar_t;
    std::vector<at::Tensor> keep;
    const Net<T> net = make_net<T>(keep, ws_, bs_, wo_, bo_, negative_slope);
    const int64_t Nf = fake.size(0);
    const int sides = paired ? 2 : 1;
    const int64_t Rb = block_rows(net, sides, Nf);
    const int64_t nblocks = (Nf + Rb - 1) / Rb;
    std::vector<double> block_stats(size_t(nblocks * 2), 0.0);
    GenJob<T> job{&net, fake.const_data_ptr<T>(), paired ? real.const_data_ptr<T>() : nullptr, Nf,
                  has_t ? &t : nullptr, paired, Rb, dfake.mutable_data_ptr<T>()};
    std::vector<const T*> mptr[2];
    for (int s = 0; s < 2 && dropout; ++s) {
      if (mks[s].empty()) continue;
      mptr[s].push_back(nullptr);
      for (const auto& m : mks[s]) mptr[s].push_back(m.const_data_ptr<T>());
    }
    if (dropout) {
      job.mk_fake = mptr[0].data();
      job.mk_real = paired ? mptr[1].data() : nullptr;
    }
    const bool simd = cpu_has_simd_target();
    auto run_blocks = [&](int64_t bb, int64_t be) {
      Workspace<T> ws(net, sides * Rb, 0, dropout);
      for (int64_t bi = bb; bi < be; ++bi) {
        if (simd) gen_block_simd(job, ws, bi, &block_stats[bi * 2]);
        else gen_block_base(job, ws, bi, &block_stats[bi * 2]);
      }
    };
    if (net.wide) run_blocks(0, nblocks);  // blocks in turn, products parallel inside
    else at::parallel_for(0, nblocks, 1, run_blocks);
    for (int64_t bi = 0; bi < nblocks; ++bi) { loss += block_stats[bi * 2]; sum_f += block_stats[bi * 2 + 1]; }
  });

  at::Tensor st = at::empty({2}, fake_in.options().dtype(at::kDouble));
  st.mutable_data_ptr<double>()[0] = loss;
  st.mutable_data_ptr<double>()[1] = sum_f / double(fake.size(0));
  return {st.to(dtype), upcast ? dfake.to(dtype) : dfake};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("mlp_disc_step", &mlp_disc_step_cpu);
  m.impl("mlp_gen_step", &mlp_gen_step_cpu);
}

}  // namespace fastgan
