// One block of stacked rows, as both paths and both steps of the CPU fused MLP step
// (csrc/mlp_step_cpu.cpp) compute it: the work plan (which path, rows per block), the network and
// the per-thread workspace as raw pointers, and the passes every block makes (the forward with its
// elementwise steps, and the V chain).
//
// Work plan: the batch is cut into blocks of a few hundred rows whose activations fit in L2;
// a block stacks its real, fake and penalty-input rows, so each product covers all of them,
// and every elementwise step (bias, activation, masks, c, penalty factors) runs on the block
// right after its product. Narrow networks run blocks in parallel and sum their gradients per
// chunk (mlp_step_cpu_narrow.h); wide ones (weights above kWideBytes) take blocks in turn and
// parallelise inside each product and elementwise step (mlp_step_cpu_wide.h). Dropout: each block
// copies its rows' masks next to its activations (Workspace::M, stacked like H).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "mlp_step_cpu_blas.h"

namespace fastgan {
namespace {

// ---- the work plan: sizes from the shapes alone (see block_rows) ----------------------------------
constexpr int64_t kChunks = 8;                  // weight-gradient partial sums (fixed: determinism)
constexpr int64_t kBlockBytes = 1024 * 1024;    // target per-thread block workspace (about L2)
constexpr int64_t kMinBlockRows = 32;
constexpr int64_t kWideBytes = 512 * 1024;      // weights above this take the wide path (mlp_step_cpu_wide.h)
constexpr int64_t kWideRows = 384;              // the wide path's stacked rows per block, about

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

// ---- the network from the op's arguments ---------------------------------------------------------
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

}  // namespace
}  // namespace fastgan
