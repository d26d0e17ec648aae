// CUDA implementation of the fused MLP discriminator / generator step (docs/DESIGN.md section 4;
// the contract is in csrc/bindings.cpp).
//
// Rows are stacked as X = [real; fake; penalty_input] (generator: [real (paired only); fake]);
// each group is a contiguous range of stacked row indices. Every row i has a loss derivative
// c_i = d loss / d o_i (0 on penalty_input rows) and the penalty rows are one contiguous range.
// With V_l = u_l * m_l (the input-gradient chain, u_L = w_out, u_{l-1} = V_l W_l) the weight
// gradients of loss + penalty are, for every row alike,
//   dW_l  = sum_i V_l,i^T (c_i h_{l-1},i + ubar_{l-1},i)      (ubar = 0 off the penalty rows)
//   db_l  = sum_i c_i V_l,i,   dw_out = sum_i (c_i h_L,i + ubar_L,i),   db_out = sum_i c_i
// where ubar_0 = gbar = dP/dg on the penalty rows and ubar_l = (ubar_{l-1} W_l^T) * m_l.
// (c_i V_l,i is the ordinary backward delta_l, so one product serves loss and penalty.)
//
// Two paths compute the same thing:
//  * fused (all widths small enough that weights, weight-gradient accumulators and a tile of
//    activations fit in shared memory): one kernel per pass, each block walks tiles of rows,
//    keeps everything in shared memory, FFMA in the accumulation type (fp32-accurate, fp64
//    exact). Unpaired losses: one pass computes each tile's logits, c and every backward
//    product. Paired (relativistic) losses pair rows of different tiles, so a logits pass and
//    the loss epilogue come first and the backward pass recomputes the forward. Weight
//    gradients accumulate per block in shared memory and are flushed with one atomicAdd per
//    entry per block.
//  * wide: the products go through ATen (at::mm, i.e. cuBLAS; TF32 only when allow_tf32), and
//    custom kernels do every elementwise epilogue (bias + LeakyReLU, masks, loss derivative,
//    penalty row norms and gbar, the c*h + ubar operand, bias / w_out column reductions).
// FASTGAN_CUDA_MLP_PATH=fused|wide|auto (default auto) forces a path, for tests and benchmarks.
// FASTGAN_CUDA_EMULATION (tests/cuda_emulation) compiles only the kernels, as CPU code.
#ifndef FASTGAN_CUDA_EMULATION
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#define FASTGAN_DYNAMIC_SMEM(name) extern __shared__ unsigned char name[]
#endif

#include "cuda_utils.cuh"
#include "loss_terms.h"

namespace fastgan {
namespace {

constexpr int kMaxDepth = 8;       // fused path: at most this many hidden layers
constexpr int kThreads = 256;      // every kernel here: 8 warps
constexpr int kWarps = kThreads / 32;

// ------------------------------------------------------------------------------------------
// Shared epilogue maths
// ------------------------------------------------------------------------------------------

// LeakyReLU mask from the activation: h > 0 exactly when z > 0 (alpha >= 0), so h carries m.
template <typename acc_t>
__device__ __forceinline__ acc_t mask_of(acc_t h, acc_t alpha) {
  return h > acc_t(0) ? acc_t(1) : alpha;
}
template <typename acc_t>
__device__ __forceinline__ acc_t leaky(acc_t z, acc_t alpha) {
  return z > acc_t(0) ? z : alpha * z;
}

// ------------------------------------------------------------------------------------------
// Loss epilogue (both paths): c_i and the stats from the logits
// ------------------------------------------------------------------------------------------

// The loss terms of the stacked rows (what c_i and the stats depend on).
template <typename scalar_t>
struct LossSpec {
  const scalar_t* b_out;    // (1,) or nullptr
  int64_t nr, nf;           // real rows [0, nr), fake rows [nr, nr + nf) of the stack
  Term term_real;           // on real logits, or on r - f when paired
  Term term_fake;           // on fake logits (unused when paired)
  bool has_real, has_fake;  // whether each term is present
};

// Per-thread partial sums of the stats; flush() adds the block's totals with one atomicAdd
// per slot: stats[0] += sum of terms, stats[2] += mean real logit, stats[3] += mean fake
// logit, stats[4] += sum_i c_i (= d loss / d b_out). Every thread of the block must flush.
template <typename acc_t>
struct LossSums {
  acc_t loss = 0, real_sum = 0, fake_sum = 0, c_sum = 0;

  // Unpaired row i of the stack with logit o (b_out included): returns c_i (0 off the loss rows).
  template <typename scalar_t>
  __device__ __forceinline__ acc_t add_row(const LossSpec<scalar_t>& s, int64_t i, acc_t o) {
    const bool is_real = i < s.nr;
    if (i >= s.nr + s.nf) return acc_t(0);
    if (is_real) real_sum += o; else fake_sum += o;
    if (!(is_real ? s.has_real : s.has_fake)) return acc_t(0);
    const Term& t = is_real ? s.term_real : s.term_fake;
    const acc_t d = term_derivative<acc_t>(t, o);
    loss += term_value<acc_t>(t, o);
    c_sum += d;
    return d;
  }

  template <typename scalar_t>
  __device__ __forceinline__ void flush(const LossSpec<scalar_t>& s, acc_t* stats) {
    const acc_t l = block_sum(loss), r = block_sum(real_sum), f = block_sum(fake_sum), c = block_sum(c_sum);
    if (threadIdx.x == 0) {
      atomicAdd(stats + 0, l);
      if (s.nr > 0) atomicAdd(stats + 2, r / acc_t(s.nr));
      if (s.nf > 0) atomicAdd(stats + 3, f / acc_t(s.nf));
      atomicAdd(stats + 4, c);
    }
  }
};

template <typename scalar_t, typename acc_t>
struct LossParams {
  const acc_t* logits;         // (N,) stacked logits without b_out
  LossSpec<scalar_t> spec;     // terms, row counts, b_out
  bool paired;                 // relativistic: term_real(r_i - f_i), nr == nf
  acc_t* c;                    // (N,) out: d loss / d o_i; pre-zeroed, rows >= nr + nf untouched
  acc_t* stats;                // (5,) accumulated (see LossSums); stats[1] (penalty) untouched
};

// c_i and the stats from the logits. Grid-stride over rows (over pairs when paired).
template <typename scalar_t, typename acc_t>
__global__ void loss_epilogue_kernel(LossParams<scalar_t, acc_t> p) {
  const LossSpec<scalar_t>& s = p.spec;
  const acc_t bo = s.b_out ? acc_t(s.b_out[0]) : acc_t(0);
  LossSums<acc_t> sums;
  const int64_t n = p.paired ? s.nr : s.nr + s.nf;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    if (p.paired) {
      const acc_t r = p.logits[i] + bo, f = p.logits[s.nr + i] + bo;
      sums.real_sum += r;
      sums.fake_sum += f;
      if (s.has_real) {
        const acc_t d = term_derivative<acc_t>(s.term_real, r - f);
        sums.loss += term_value<acc_t>(s.term_real, r - f);
        p.c[i] = d;
        p.c[s.nr + i] = -d;
      }
    } else {
      p.c[i] = sums.add_row(s, i, p.logits[i] + bo);
    }
  }
  sums.flush(s, p.stats);
}

// ------------------------------------------------------------------------------------------
// Wide path: elementwise kernels around at::mm
// ------------------------------------------------------------------------------------------

// h = leaky(z + b) in place; z (rows, cols) row-major, b (cols,) or nullptr.
template <typename scalar_t, typename acc_t>
__global__ void bias_leaky_kernel(scalar_t* __restrict__ z, const scalar_t* __restrict__ b, int64_t rows, int64_t cols,
                                  acc_t alpha) {
  const int64_t n = rows * cols;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    acc_t v = acc_t(z[e]);
    if (b) v += acc_t(b[e % cols]);
    z[e] = scalar_t(leaky(v, alpha));
  }
}

// out[i, j] = u[i * u_stride + j] * m(h[i, j]); u_stride = 0 broadcasts one row (w_out).
// out may alias u (in place) when u_stride == cols.
template <typename scalar_t, typename acc_t>
__global__ void mask_mul_kernel(scalar_t* out, const scalar_t* u, int64_t u_stride, const scalar_t* __restrict__ h,
                                int64_t rows, int64_t cols, acc_t alpha) {
  const int64_t n = rows * cols;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / cols, j = e - i * cols;
    out[e] = scalar_t(acc_t(u[i * u_stride + j]) * mask_of(acc_t(h[e]), alpha));
  }
}

// One warp per penalty row of g (rows, cols): P += penalty(|g_r|); g_r <- dP/dg_r = k_r g_r.
template <typename scalar_t, typename acc_t>
__global__ void penalty_rows_kernel(scalar_t* __restrict__ g, int64_t rows, int64_t cols, int kind, acc_t weight,
                                    acc_t center, acc_t* __restrict__ penalty_sum) {
  const int lane = threadIdx.x & 31;
  acc_t acc = 0;
  for (int64_t r = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5); r < rows; r += int64_t(gridDim.x) * kWarps) {
    scalar_t* row = g + r * cols;
    acc_t sq = 0;
    for (int64_t j = lane; j < cols; j += 32) {
      const acc_t v = acc_t(row[j]);
      sq += v * v;
    }
    sq = __shfl_sync(0xffffffffu, warp_sum(sq), 0);
    const acc_t k = penalty_grad_factor<acc_t>(kind, sq, weight, center);
    if (lane == 0) acc += penalty_value<acc_t>(kind, sq, weight, center);
    for (int64_t j = lane; j < cols; j += 32) row[j] = scalar_t(k * acc_t(row[j]));
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) atomicAdd(penalty_sum, acc);
}

// The weight-gradient operand, in place: h[i, j] <- c_i h[i, j] + (ubar[i - p0, j] if p0 <= i < p1).
template <typename scalar_t, typename acc_t>
__global__ void fold_operand_kernel(scalar_t* __restrict__ h, const acc_t* __restrict__ c,
                                    const scalar_t* __restrict__ ubar, int64_t p0, int64_t p1, int64_t rows,
                                    int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / cols, j = e - i * cols;
    acc_t v = c[i] * acc_t(h[e]);
    if (ubar && i >= p0 && i < p1) v += acc_t(ubar[(i - p0) * cols + j]);
    h[e] = scalar_t(v);
  }
}

// out[j] += sum_i s_i m[i, j] (s = nullptr: s_i = 1). Block (32 columns x 8 row lanes) per
// column chunk and row chunk; one atomicAdd per column per block.
constexpr int kColRows = 512;
template <typename scalar_t, typename acc_t>
__global__ void colsum_kernel(const scalar_t* __restrict__ m, const acc_t* __restrict__ s, int64_t rows, int64_t cols,
                              acc_t* __restrict__ out) {
  __shared__ acc_t part[kWarps][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t j = int64_t(blockIdx.x) * 32 + lane;
  const int64_t r0 = int64_t(blockIdx.y) * kColRows;
  const int64_t r1 = r0 + kColRows < rows ? r0 + kColRows : rows;
  acc_t acc = 0;
  if (j < cols)
    for (int64_t i = r0 + warp; i < r1; i += kWarps) acc += (s ? s[i] : acc_t(1)) * acc_t(m[i * cols + j]);
  part[warp][lane] = acc;
  __syncthreads();
  if (warp == 0 && j < cols) {
    for (int w = 1; w < kWarps; ++w) acc += part[w][lane];
    atomicAdd(out + j, acc);
  }
}

// ------------------------------------------------------------------------------------------
// Fused path: one block per tile of rows, everything in shared memory
// ------------------------------------------------------------------------------------------

enum FusedMode : int { MODE_LOGITS = 0, MODE_DISC = 1, MODE_GEN = 2 };

template <typename scalar_t, typename acc_t>
struct FusedParams {
  const scalar_t* x[3];        // row groups, row-major (rows_g, K): real, fake, penalty_input (nullptr if absent)
  int64_t group_end[3];        // stacked row index one past each group: Nr, Nr + Nf, Nr + Nf + Np
  int depth;                   // L, hidden layers (1..kMaxDepth)
  int width[kMaxDepth + 1];    // H_0 = K, H_1..H_L
  const scalar_t* W[kMaxDepth];  // W_l, (H_l, H_{l-1}) row-major
  const scalar_t* b[kMaxDepth];  // b_l, (H_l,), or nullptr (no biases)
  const scalar_t* w_out;       // (H_L,)
  acc_t alpha;                 // LeakyReLU negative slope
  int64_t row_begin, row_end;  // stacked rows this pass walks, in tiles of `tile` rows
  int64_t pen_begin, pen_end;  // stacked penalty rows (empty range: no penalty)
  int pen_kind;                // PenaltyKind
  acc_t pen_weight, pen_center;
  int tile;                    // rows per tile (T)
  int ld;                      // leading dimension of every activation buffer (>= max width)
  acc_t* logits;               // MODE_LOGITS out: (N,) logits without b_out
  bool inline_loss;            // MODE_DISC/GEN: c from the tile's own logits (unpaired losses only)
  LossSpec<scalar_t> loss;     // with inline_loss: terms, row counts, b_out
  acc_t* stats;                // with inline_loss: (5,) accumulated as by the loss epilogue
  const acc_t* c;              // without inline_loss: (N,) d loss / d o from the loss epilogue
  acc_t* dW[kMaxDepth];        // MODE_DISC out, accumulated: (H_l, H_{l-1}), pre-zeroed
  acc_t* db[kMaxDepth];        // MODE_DISC out, accumulated: (H_l,), or nullptr (no biases)
  acc_t* dw_out;               // MODE_DISC out, accumulated: (H_L,)
  acc_t* penalty_sum;          // MODE_DISC out, accumulated: scalar
  scalar_t* grad;              // MODE_GEN out: (row_end - row_begin, K), d loss / d x
};

__host__ __device__ inline int odd_ld(int n) { return n | 1; }  // odd strides spread smem banks

// Shared-memory layout in acc_t elements; the host sizes the launch with the same function.
struct FusedLayout {
  int w[kMaxDepth], b[kMaxDepth], dw[kMaxDepth], db[kMaxDepth];  // offsets per layer
  int w_out, dw_out;  // offsets of (H_L,) vectors
  int h, v, u;        // activation buffers: h_0..h_L, V_1..V_L, two ubar ping-pong buffers
  int c;              // (T,) per-row loss derivative
  int total;          // elements
};

__host__ __device__ inline FusedLayout fused_layout(int depth, const int* width, int tile, int ld, bool disc) {
  FusedLayout s{};
  int off = 0;
  for (int l = 0; l < depth; ++l) {
    s.w[l] = off;
    off += width[l + 1] * odd_ld(width[l]);
    s.b[l] = off;
    off += width[l + 1];
  }
  s.w_out = off;
  off += width[depth];
  for (int l = 0; l < depth; ++l) {
    s.dw[l] = off;
    off += disc ? width[l + 1] * width[l] : 0;
    s.db[l] = off;
    off += disc ? width[l + 1] : 0;
  }
  s.dw_out = off;
  off += disc ? width[depth] : 0;
  s.h = off;
  off += (depth + 1) * tile * ld;
  s.v = off;
  off += depth * tile * ld;
  s.u = off;
  off += 2 * tile * ld;
  s.c = off;
  off += tile;
  s.total = off;
  return s;
}

// out[r, j] = epi(r, j, sum_k a[r, k] w[j, k]) for r < T, j < n_out, k < n_in (a W^T).
template <typename acc_t, typename Epi>
__device__ __forceinline__ void tile_mm_nt(acc_t* out, const acc_t* a, const acc_t* w, int ldw, int T, int n_out,
                                           int n_in, int ld, Epi epi) {
  for (int e = threadIdx.x; e < T * n_out; e += blockDim.x) {
    const int r = e / n_out, j = e - r * n_out;
    const acc_t* ar = a + r * ld;
    const acc_t* wj = w + j * ldw;
    acc_t s = 0;
    for (int k = 0; k < n_in; ++k) s += ar[k] * wj[k];
    out[r * ld + j] = epi(r, j, s);
  }
}

// out[r, k] = epi(r, k, sum_j a[r, j] w[j, k]) for r < T, k < n_out, j < n_in (a W).
template <typename acc_t, typename Epi>
__device__ __forceinline__ void tile_mm_nn(acc_t* out, const acc_t* a, const acc_t* w, int ldw, int T, int n_out,
                                           int n_in, int ld, Epi epi) {
  for (int e = threadIdx.x; e < T * n_out; e += blockDim.x) {
    const int r = e / n_out, k = e - r * n_out;
    const acc_t* ar = a + r * ld;
    acc_t s = 0;
    for (int j = 0; j < n_in; ++j) s += ar[j] * w[j * ldw + k];
    out[r * ld + k] = epi(r, k, s);
  }
}

// One kernel for three passes over the stacked rows (see the file comment):
//   MODE_LOGITS: forward, logits[i] = h_L,i . w_out.
//   MODE_DISC:   forward, V chain, g = V_1 W_1 and gbar on penalty rows, ubar chain,
//                per-block dW/db/dw_out accumulation, flushed with atomics at the end.
//   MODE_GEN:    forward, V chain, grad_i = c_i V_1,i W_1.
template <typename scalar_t, typename acc_t, int MODE>
__global__ void __launch_bounds__(kThreads) fused_mlp_kernel(FusedParams<scalar_t, acc_t> p) {
  FASTGAN_DYNAMIC_SMEM(smem_raw);
  acc_t* sm = reinterpret_cast<acc_t*>(smem_raw);
  const int L = p.depth, T = p.tile, ld = p.ld, K = p.width[0];
  const FusedLayout s = fused_layout(L, p.width, T, ld, MODE == MODE_DISC);
  acc_t* const sH = sm + s.h;  // h_l at sH + l * T * ld
  acc_t* const sV = sm + s.v;  // V_l at sV + (l - 1) * T * ld
  acc_t* const sU = sm + s.u;  // ubar ping-pong: sU + (l % 2) * T * ld
  acc_t* const sC = sm + s.c;
  const acc_t alpha = p.alpha;

  // Parameters into shared memory (weights with odd row strides), accumulators to zero.
  for (int l = 0; l < L; ++l) {
    const int n_out = p.width[l + 1], n_in = p.width[l], ldw = odd_ld(n_in);
    for (int e = threadIdx.x; e < n_out * n_in; e += blockDim.x) {
      const int j = e / n_in, k = e - j * n_in;
      sm[s.w[l] + j * ldw + k] = acc_t(p.W[l][e]);
      if (MODE == MODE_DISC) sm[s.dw[l] + e] = acc_t(0);
    }
    for (int j = threadIdx.x; j < n_out; j += blockDim.x) {
      sm[s.b[l] + j] = p.b[l] ? acc_t(p.b[l][j]) : acc_t(0);
      if (MODE == MODE_DISC) sm[s.db[l] + j] = acc_t(0);
    }
  }
  for (int j = threadIdx.x; j < p.width[L]; j += blockDim.x) {
    sm[s.w_out + j] = acc_t(p.w_out[j]);
    if (MODE == MODE_DISC) sm[s.dw_out + j] = acc_t(0);
  }
  acc_t penalty_acc = 0;  // this thread's share of the penalty (lane 0 of each warp)
  LossSums<acc_t> sums;   // this thread's share of the stats (inline loss, lane 0 of each warp)
  const acc_t b_out = p.loss.b_out ? acc_t(p.loss.b_out[0]) : acc_t(0);
  __syncthreads();

  const int64_t rows = p.row_end - p.row_begin;
  const int64_t tiles = (rows + T - 1) / T;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t r0 = p.row_begin + tile * T;  // stacked index of the tile's first row
    const int n = int(rows - tile * T < T ? rows - tile * T : T);  // valid rows in this tile

    // h_0: the tile's input rows (rows past the end are zero and get c = 0, so add nothing).
    for (int e = threadIdx.x; e < T * K; e += blockDim.x) {
      const int r = e / K, k = e - r * K;
      acc_t v = 0;
      if (r < n) {
        const int64_t i = r0 + r;
        const int g = i < p.group_end[0] ? 0 : (i < p.group_end[1] ? 1 : 2);
        const int64_t local = g == 0 ? i : i - p.group_end[g - 1];
        v = acc_t(p.x[g][local * K + k]);
      }
      sH[r * ld + k] = v;
    }
    __syncthreads();

    // Forward: h_l = leaky(h_{l-1} W_l^T + b_l).
    for (int l = 1; l <= L; ++l) {
      const acc_t* bias = sm + s.b[l - 1];
      tile_mm_nt(sH + l * T * ld, sH + (l - 1) * T * ld, sm + s.w[l - 1], odd_ld(p.width[l - 1]), T, p.width[l],
                 p.width[l - 1], ld, [&](int, int j, acc_t z) { return leaky(z + bias[j], alpha); });
      __syncthreads();
    }

    // Logits (one warp per row) for pass 1 or for the inline loss; else c from the epilogue.
    if (MODE == MODE_LOGITS || p.inline_loss) {
      const int lane = threadIdx.x & 31, HL = p.width[L];
      for (int r = threadIdx.x >> 5; r < T; r += kWarps) {
        acc_t o = 0;
        for (int j = lane; j < HL; j += 32) o += sH[L * T * ld + r * ld + j] * sm[s.w_out + j];
        o = warp_sum(o);
        if (lane == 0 && MODE == MODE_LOGITS && r < n) p.logits[r0 + r] = o;
        if (lane == 0 && MODE != MODE_LOGITS) sC[r] = r < n ? sums.add_row(p.loss, r0 + r, o + b_out) : acc_t(0);
      }
    } else {
      for (int r = threadIdx.x; r < T; r += blockDim.x) sC[r] = r < n ? p.c[r0 + r] : acc_t(0);
    }
    __syncthreads();
    if (MODE == MODE_LOGITS) continue;

    // V chain: V_L = w_out * m_L; V_{l-1} = (V_l W_l) * m_{l-1}.
    {
      const int HL = p.width[L];
      acc_t* vL = sV + (L - 1) * T * ld;
      const acc_t* hL = sH + L * T * ld;
      for (int e = threadIdx.x; e < T * HL; e += blockDim.x) {
        const int r = e / HL, j = e - r * HL;
        vL[r * ld + j] = sm[s.w_out + j] * mask_of(hL[r * ld + j], alpha);
      }
      __syncthreads();
    }
    for (int l = L; l >= 2; --l) {
      const acc_t* h = sH + (l - 1) * T * ld;
      tile_mm_nn(sV + (l - 2) * T * ld, sV + (l - 1) * T * ld, sm + s.w[l - 1], odd_ld(p.width[l - 1]), T,
                 p.width[l - 1], p.width[l], ld, [&](int r, int k, acc_t u) { return u * mask_of(h[r * ld + k], alpha); });
      __syncthreads();
    }

    if (MODE == MODE_GEN) {
      // grad_i = c_i g_i with g = V_1 W_1, written straight to global memory.
      const int H1 = p.width[1], ldw = odd_ld(K);
      const acc_t* v1 = sV;
      for (int e = threadIdx.x; e < n * K; e += blockDim.x) {
        const int r = e / K, k = e - r * K;
        acc_t g = 0;
        for (int j = 0; j < H1; ++j) g += v1[r * ld + j] * sm[s.w[0] + j * ldw + k];
        p.grad[(r0 - p.row_begin + r) * K + k] = scalar_t(sC[r] * g);
      }
      __syncthreads();
      continue;
    }

    // MODE_DISC from here. Penalty rows of this tile: [pa, pb) in tile-local indices.
    const int64_t pa64 = p.pen_begin > r0 ? p.pen_begin - r0 : 0;
    const int64_t pb64 = p.pen_end < r0 + n ? p.pen_end - r0 : n;
    const int pa = int(pa64 < T ? pa64 : T), pb = int(pb64 > 0 ? pb64 : 0);
    if (pa < pb) {
      // g = V_1 W_1 into ubar buffer 0; then gbar = k_r g_r on penalty rows, 0 elsewhere.
      acc_t* u0 = sU;
      tile_mm_nn(u0, sV, sm + s.w[0], odd_ld(K), T, K, p.width[1], ld, [](int, int, acc_t g) { return g; });
      __syncthreads();
      const int lane = threadIdx.x & 31;
      for (int r = threadIdx.x >> 5; r < T; r += kWarps) {
        acc_t sq = 0;
        for (int k = lane; k < K; k += 32) sq += u0[r * ld + k] * u0[r * ld + k];
        sq = __shfl_sync(0xffffffffu, warp_sum(sq), 0);
        const bool pen = r >= pa && r < pb;
        const acc_t f = pen ? penalty_grad_factor<acc_t>(p.pen_kind, sq, p.pen_weight, p.pen_center) : acc_t(0);
        if (pen && lane == 0) penalty_acc += penalty_value<acc_t>(p.pen_kind, sq, p.pen_weight, p.pen_center);
        for (int k = lane; k < K; k += 32) u0[r * ld + k] *= f;
      }
      __syncthreads();
      // ubar_l = (ubar_{l-1} W_l^T) * m_l; once ubar_{l-1} is known, h_{l-1} <- c h_{l-1} + ubar_{l-1}.
      for (int l = 1; l <= L; ++l) {
        const acc_t* h = sH + l * T * ld;
        const acc_t* prev = sU + ((l - 1) & 1) * T * ld;
        tile_mm_nt(sU + (l & 1) * T * ld, prev, sm + s.w[l - 1], odd_ld(p.width[l - 1]), T, p.width[l],
                   p.width[l - 1], ld, [&](int r, int j, acc_t z) { return z * mask_of(h[r * ld + j], alpha); });
        acc_t* hp = sH + (l - 1) * T * ld;
        const int W = p.width[l - 1];
        for (int e = threadIdx.x; e < T * W; e += blockDim.x) {
          const int r = e / W, k = e - r * W;
          hp[r * ld + k] = sC[r] * hp[r * ld + k] + prev[r * ld + k];
        }
        __syncthreads();
      }
      acc_t* hL = sH + L * T * ld;
      const acc_t* uL = sU + (L & 1) * T * ld;
      for (int e = threadIdx.x; e < T * p.width[L]; e += blockDim.x) {
        const int r = e / p.width[L], j = e - r * p.width[L];
        hL[r * ld + j] = sC[r] * hL[r * ld + j] + uL[r * ld + j];
      }
    } else {
      for (int l = 0; l <= L; ++l) {
        acc_t* h = sH + l * T * ld;
        const int W = p.width[l];
        for (int e = threadIdx.x; e < T * W; e += blockDim.x) {
          const int r = e / W, k = e - r * W;
          h[r * ld + k] *= sC[r];
        }
      }
    }
    __syncthreads();

    // Accumulate: dW_l += V_l^T B_{l-1}, db_l += c^T V_l, dw_out += colsum B_L (B = folded sH).
    // Each accumulator entry belongs to one thread, so no atomics in shared memory.
    for (int l = 1; l <= L; ++l) {
      const int n_out = p.width[l], n_in = p.width[l - 1];
      const acc_t* v = sV + (l - 1) * T * ld;
      const acc_t* bop = sH + (l - 1) * T * ld;
      acc_t* dw = sm + s.dw[l - 1];
      for (int e = threadIdx.x; e < n_out * n_in; e += blockDim.x) {
        const int j = e / n_in, k = e - j * n_in;
        acc_t acc = 0;
        for (int r = 0; r < T; ++r) acc += v[r * ld + j] * bop[r * ld + k];
        dw[e] += acc;
      }
      if (p.db[l - 1]) {
        acc_t* db = sm + s.db[l - 1];
        for (int j = threadIdx.x; j < n_out; j += blockDim.x) {
          acc_t acc = 0;
          for (int r = 0; r < T; ++r) acc += sC[r] * v[r * ld + j];
          db[j] += acc;
        }
      }
    }
    {
      const acc_t* bop = sH + L * T * ld;
      for (int j = threadIdx.x; j < p.width[L]; j += blockDim.x) {
        acc_t acc = 0;
        for (int r = 0; r < T; ++r) acc += bop[r * ld + j];
        sm[s.dw_out + j] += acc;
      }
    }
    __syncthreads();
  }

  if (MODE == MODE_DISC) {
    for (int l = 0; l < L; ++l) {
      const int n_out = p.width[l + 1], n_in = p.width[l];
      for (int e = threadIdx.x; e < n_out * n_in; e += blockDim.x) atomicAdd(p.dW[l] + e, sm[s.dw[l] + e]);
      if (p.db[l])
        for (int j = threadIdx.x; j < n_out; j += blockDim.x) atomicAdd(p.db[l] + j, sm[s.db[l] + j]);
    }
    for (int j = threadIdx.x; j < p.width[L]; j += blockDim.x) atomicAdd(p.dw_out + j, sm[s.dw_out + j]);
    penalty_acc = block_sum(penalty_acc);
    if (threadIdx.x == 0 && p.pen_begin < p.pen_end) atomicAdd(p.penalty_sum, penalty_acc);
  }
  if (MODE != MODE_LOGITS && p.inline_loss) sums.flush(p.loss, p.stats);
}

// ------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------
#ifndef FASTGAN_CUDA_EMULATION

Term term_from(c10::ArrayRef<double> t, const char* name) {
  TORCH_CHECK(t.size() == 4, "fastgan mlp step (cuda): ", name, " must be [phi, sign, shift, scale] or empty, got ",
              t.size(), " numbers");
  const int phi = int(t[0]);
  TORCH_CHECK(phi >= SOFTPLUS && phi <= HALF_SQUARE && double(phi) == t[0], "fastgan mlp step (cuda): ", name,
              "[0] (phi) must be 0 softplus, 1 relu, 2 identity or 3 half-square, got ", t[0]);
  return Term{phi, t[1], t[2], t[3]};
}

// Checks every tensor against real's device and dtype and the layer shapes; returns widths.
std::vector<int64_t> check_network(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                                   const at::Tensor& w_out, const std::optional<at::Tensor>& b_out,
                                   double negative_slope) {
  const auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device() == x.device(), "fastgan mlp step (cuda): ", name, " is on ", t.device(),
                " but the rows are on ", x.device());
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "fastgan mlp step (cuda): ", name, " has dtype ",
                t.scalar_type(), " but the rows have ", x.scalar_type());
  };
  TORCH_CHECK(!weights.empty(), "fastgan mlp step (cuda): weights must hold at least one hidden layer");
  TORCH_CHECK(biases.empty() || biases.size() == weights.size(), "fastgan mlp step (cuda): biases must be empty or "
              "one per layer (", weights.size(), "), got ", biases.size());
  TORCH_CHECK(negative_slope >= 0, "fastgan mlp step (cuda): negative_slope must be >= 0, got ", negative_slope);
  std::vector<int64_t> width{x.size(1)};
  for (size_t l = 0; l < weights.size(); ++l) {
    const at::Tensor& w = weights[l];
    same(w, "weights[l]");
    TORCH_CHECK(w.dim() == 2 && w.size(1) == width.back() && w.size(0) > 0, "fastgan mlp step (cuda): weights[", l,
                "] must be (H_", l + 1, ", ", width.back(), "), got ", w.sizes());
    width.push_back(w.size(0));
    if (!biases.empty()) {
      same(biases[l], "biases[l]");
      TORCH_CHECK(biases[l].dim() == 1 && biases[l].size(0) == w.size(0), "fastgan mlp step (cuda): biases[", l,
                  "] must be (", w.size(0), ",), got ", biases[l].sizes());
    }
  }
  same(w_out, "w_out");
  TORCH_CHECK(w_out.dim() == 2 && w_out.size(0) == 1 && w_out.size(1) == width.back(),
              "fastgan mlp step (cuda): w_out must be (1, ", width.back(), "), got ", w_out.sizes());
  if (b_out) {
    same(*b_out, "b_out");
    TORCH_CHECK(b_out->numel() == 1 && b_out->dim() == 1, "fastgan mlp step (cuda): b_out must be (1,), got ",
                b_out->sizes());
  }
  return width;
}

void check_rows(const at::Tensor& t, const at::Tensor& like, int64_t K, const char* name) {
  TORCH_CHECK(t.is_cuda(), "fastgan mlp step (cuda): ", name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.device() == like.device(), "fastgan mlp step (cuda): ", name, " is on ", t.device(), " but ",
              "the other rows are on ", like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "fastgan mlp step (cuda): ", name, " has dtype ",
              t.scalar_type(), " but the other rows have ", like.scalar_type());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastgan mlp step (cuda): ", name,
              " must be floating point, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 2 && t.size(0) > 0 && t.size(1) == K, "fastgan mlp step (cuda): ", name,
              " must be (rows >= 1, ", K, "), got ", t.sizes());
}

// Sets the fp32 matmul precision (what torch.set_float32_matmul_precision sets: 'high' lets
// cuBLAS use TF32, 'highest' keeps fp32) for the products of one call, and restores it.
struct MatmulPrecisionScope {
  at::Float32MatmulPrecision saved;
  explicit MatmulPrecisionScope(bool allow_tf32) : saved(at::globalContext().float32MatmulPrecision()) {
    at::globalContext().setFloat32MatmulPrecision(allow_tf32 ? "high" : "highest");
  }
  ~MatmulPrecisionScope() {
    at::globalContext().setFloat32MatmulPrecision(saved == at::Float32MatmulPrecision::HIGHEST ? "highest"
                                                  : saved == at::Float32MatmulPrecision::HIGH  ? "high"
                                                                                               : "medium");
  }
};

enum class Path { AUTO, FUSED, WIDE };
Path path_override() {
  const char* v = std::getenv("FASTGAN_CUDA_MLP_PATH");
  if (!v || !*v || !std::strcmp(v, "auto")) return Path::AUTO;
  if (!std::strcmp(v, "fused")) return Path::FUSED;
  TORCH_CHECK(!std::strcmp(v, "wide"), "FASTGAN_CUDA_MLP_PATH must be 'fused', 'wide' or 'auto', got '", v, "'");
  return Path::WIDE;
}

// Everything both passes and both paths share: the stacked rows and the network.
struct Problem {
  at::Tensor x[3];         // contiguous row groups (undefined when absent): real, fake, penalty_input
  int64_t end[3];          // stacked row boundaries
  std::vector<at::Tensor> W, b;  // contiguous; b empty without biases
  at::Tensor w_out;        // contiguous (1, H_L)
  std::optional<at::Tensor> b_out;
  std::vector<int64_t> width;
  double alpha;
  int64_t rows() const { return end[2]; }
};

int64_t max_width(const Problem& pr) {
  int64_t m = 0;
  for (int64_t w : pr.width) m = w > m ? w : m;
  return m;
}

// Rows per tile for the fused path, or 0 when it does not fit in shared memory.
int fused_tile(const Problem& pr, size_t acc_size, bool disc, size_t* bytes) {
  const int L = int(pr.width.size()) - 1;
  if (L > kMaxDepth || max_width(pr) > 256) return 0;
  int w[kMaxDepth + 1];
  for (int l = 0; l <= L; ++l) w[l] = int(pr.width[l]);
  int dev_smem = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&dev_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, pr.x[1].get_device()));
  const size_t budget = size_t(dev_smem) - 1024;  // block_sum's static buffer
  for (int tile : {32, 16, 8, 4, 2, 1}) {  // small tiles only for fp64 (a test dtype)
    const size_t need = size_t(fused_layout(L, w, tile, odd_ld(int(max_width(pr))), disc).total) * acc_size;
    if (need <= budget) {
      *bytes = need;
      return tile;
    }
  }
  return 0;
}

template <typename scalar_t, typename acc_t, int MODE>
void launch_fused(const Problem& pr, int tile, size_t bytes, int64_t row_begin, int64_t row_end,
                  FusedParams<scalar_t, acc_t> p) {
  const int L = int(pr.width.size()) - 1;
  for (int g = 0; g < 3; ++g) {
    p.x[g] = pr.x[g].defined() ? pr.x[g].const_data_ptr<scalar_t>() : nullptr;
    p.group_end[g] = pr.end[g];
  }
  p.depth = L;
  for (int l = 0; l <= L; ++l) p.width[l] = int(pr.width[l]);
  for (int l = 0; l < L; ++l) {
    p.W[l] = pr.W[l].const_data_ptr<scalar_t>();
    p.b[l] = pr.b.empty() ? nullptr : pr.b[l].const_data_ptr<scalar_t>();
  }
  p.w_out = pr.w_out.const_data_ptr<scalar_t>();
  p.alpha = acc_t(pr.alpha);
  p.row_begin = row_begin;
  p.row_end = row_end;
  p.tile = tile;
  p.ld = odd_ld(int(max_width(pr)));
  auto kernel = fused_mlp_kernel<scalar_t, acc_t, MODE>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  int sms = 0, per_sm = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, pr.x[1].get_device()));
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, bytes));
  const int64_t tiles = (row_end - row_begin + tile - 1) / tile;
  const int64_t cap = int64_t(sms) * (per_sm > 0 ? per_sm : 1);
  const int grid = int(tiles < cap ? tiles : cap);
  if (grid == 0) return;
  kernel<<<grid, kThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
LossSpec<scalar_t> loss_spec(const Problem& pr, int64_t nr, int64_t nf, const Term* tr, const Term* tf) {
  LossSpec<scalar_t> s{};
  s.b_out = pr.b_out ? pr.b_out->const_data_ptr<scalar_t>() : nullptr;
  s.nr = nr;
  s.nf = nf;
  s.has_real = tr != nullptr;
  s.has_fake = tf != nullptr;
  if (tr) s.term_real = *tr;
  if (tf) s.term_fake = *tf;
  return s;
}

template <typename scalar_t, typename acc_t>
void launch_loss(const at::Tensor& logits, const LossSpec<scalar_t>& spec, bool paired, at::Tensor& c,
                 at::Tensor& stats) {
  LossParams<scalar_t, acc_t> p{};
  p.logits = logits.const_data_ptr<acc_t>();
  p.spec = spec;
  p.paired = paired;
  p.c = c.mutable_data_ptr<acc_t>();
  p.stats = stats.mutable_data_ptr<acc_t>();
  const int64_t n = paired ? spec.nr : spec.nr + spec.nf;
  loss_epilogue_kernel<scalar_t, acc_t>
      <<<blocks_for(n, kThreads, 256), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Fused path: c and the stats either in the backward pass itself (unpaired losses: each row's
// c needs only its own logit) or from a logits pass and the loss epilogue (paired losses).
template <typename scalar_t, typename acc_t>
void fused_loss(const Problem& pr, int tile, size_t bytes, const LossSpec<scalar_t>& spec, bool paired,
                at::Tensor& logits, at::Tensor& c, at::Tensor& stats, FusedParams<scalar_t, acc_t>& p) {
  p.stats = stats.mutable_data_ptr<acc_t>();
  p.loss = spec;
  p.inline_loss = !paired;
  if (paired) {
    p.logits = logits.mutable_data_ptr<acc_t>();
    launch_fused<scalar_t, acc_t, MODE_LOGITS>(pr, tile, bytes, 0, pr.rows(), p);
    launch_loss<scalar_t, acc_t>(logits, spec, paired, c, stats);
    p.c = c.const_data_ptr<acc_t>();
  }
}

// Wide path forward: every h_l (N, H_l) in the input dtype (h_0 = X), and the logits (N,) in acc dtype.
std::vector<at::Tensor> wide_forward(const Problem& pr, const at::Tensor& X, at::Tensor& logits) {
  const int L = int(pr.width.size()) - 1;
  const int64_t N = X.size(0);
  std::vector<at::Tensor> h{X};
  for (int l = 0; l < L; ++l) {
    at::Tensor z = at::mm(h.back(), pr.W[l].t());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "mlp_bias_leaky", [&] {
      using acc_t = typename AccType<scalar_t>::type;
      bias_leaky_kernel<scalar_t, acc_t><<<blocks_for(z.numel(), kThreads), kThreads, 0,
                                           c10::cuda::getCurrentCUDAStream()>>>(
          z.mutable_data_ptr<scalar_t>(), pr.b.empty() ? nullptr : pr.b[l].const_data_ptr<scalar_t>(), N,
          pr.width[l + 1], acc_t(pr.alpha));
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    h.push_back(z);
  }
  logits = at::mm(h.back(), pr.w_out.t()).reshape({N}).to(logits.scalar_type());
  return h;
}

// Wide path V chain over rows [0, N): V_L = w_out * m_L, V_{l-1} = (V_l W_l) * m_{l-1}. Returns V_1..V_L.
std::vector<at::Tensor> wide_v_chain(const Problem& pr, const std::vector<at::Tensor>& h) {
  const int L = int(pr.width.size()) - 1;
  const int64_t N = h[0].size(0);
  std::vector<at::Tensor> v(L);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h[0].scalar_type(), "mlp_v_chain", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const auto stream = c10::cuda::getCurrentCUDAStream();
    v[L - 1] = at::empty_like(h[L]);
    mask_mul_kernel<scalar_t, acc_t><<<blocks_for(v[L - 1].numel(), kThreads), kThreads, 0, stream>>>(
        v[L - 1].mutable_data_ptr<scalar_t>(), pr.w_out.const_data_ptr<scalar_t>(), 0,
        h[L].const_data_ptr<scalar_t>(), N, pr.width[L], acc_t(pr.alpha));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    for (int l = L; l >= 2; --l) {
      at::Tensor u = at::mm(v[l - 1], pr.W[l - 1]);  // (N, H_{l-1})
      mask_mul_kernel<scalar_t, acc_t><<<blocks_for(u.numel(), kThreads), kThreads, 0, stream>>>(
          u.mutable_data_ptr<scalar_t>(), u.const_data_ptr<scalar_t>(), pr.width[l - 1],
          h[l - 1].const_data_ptr<scalar_t>(), N, pr.width[l - 1], acc_t(pr.alpha));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      v[l - 2] = u;
    }
  });
  return v;
}

Problem make_problem(const at::Tensor& real_or_empty, const at::Tensor& fake, const at::Tensor& third,
                     at::TensorList weights, at::TensorList biases, const at::Tensor& w_out,
                     const std::optional<at::Tensor>& b_out, double negative_slope) {
  Problem pr;
  pr.width = check_network(fake, weights, biases, w_out, b_out, negative_slope);
  int64_t end = 0;
  const at::Tensor* groups[3] = {&real_or_empty, &fake, &third};
  for (int g = 0; g < 3; ++g) {
    if (groups[g]->defined()) pr.x[g] = groups[g]->contiguous();
    end += pr.x[g].defined() ? pr.x[g].size(0) : 0;
    pr.end[g] = end;
  }
  for (const auto& w : weights) pr.W.push_back(w.contiguous());
  for (const auto& b : biases) pr.b.push_back(b.contiguous());
  pr.w_out = w_out.contiguous();
  if (b_out) pr.b_out = b_out->contiguous();
  pr.alpha = negative_slope;
  return pr;
}

at::Tensor stacked_rows(const Problem& pr) {
  std::vector<at::Tensor> parts;
  for (const auto& x : pr.x)
    if (x.defined()) parts.push_back(x);
  return parts.size() == 1 ? parts[0].clone() : at::cat(parts, 0);
}

std::vector<at::Tensor> mlp_disc_step_cuda(const at::Tensor& real, const at::Tensor& fake,
                                           const std::optional<at::Tensor>& penalty_input, at::TensorList weights,
                                           at::TensorList biases, const at::Tensor& w_out,
                                           const std::optional<at::Tensor>& b_out, double negative_slope,
                                           c10::ArrayRef<double> term_real, c10::ArrayRef<double> term_fake,
                                           bool paired, int64_t penalty_side, int64_t penalty_kind,
                                           double penalty_weight, double penalty_center, bool allow_tf32) {
  TORCH_CHECK(real.dim() == 2, "fastgan mlp_disc_step (cuda): real must be (rows, K), got ", real.sizes());
  const int64_t K = real.size(1);
  check_rows(real, real, K, "real");
  check_rows(fake, real, K, "fake");
  TORCH_CHECK(penalty_side >= -1 && penalty_side <= 2, "fastgan mlp_disc_step (cuda): penalty_side must be -1 none, "
              "0 real, 1 fake or 2 penalty_input, got ", penalty_side);
  TORCH_CHECK(penalty_kind == PENALTY_SQUARED || penalty_kind == PENALTY_CENTERED, "fastgan mlp_disc_step (cuda): "
              "penalty_kind must be 0 (weight |g|^2 / 2) or 1 (weight (|g| - center)^2), got ", penalty_kind);
  TORCH_CHECK((penalty_side == 2) == penalty_input.has_value(), "fastgan mlp_disc_step (cuda): penalty_input must be "
              "given exactly when penalty_side == 2, got penalty_side ", penalty_side);
  if (penalty_input) check_rows(*penalty_input, real, K, "penalty_input");
  if (paired) {
    TORCH_CHECK(real.size(0) == fake.size(0), "fastgan mlp_disc_step (cuda): paired losses need as many real rows "
                "as fake rows, got ", real.size(0), " and ", fake.size(0));
    TORCH_CHECK(term_fake.empty(), "fastgan mlp_disc_step (cuda): paired losses take term_fake = []");
  }
  const Term tr = term_real.empty() ? Term{} : term_from(term_real, "term_real");
  const Term tf = term_fake.empty() ? Term{} : term_from(term_fake, "term_fake");
  const c10::cuda::CUDAGuard guard(real.device());
  const Problem pr = make_problem(real, fake, penalty_input ? *penalty_input : at::Tensor(), weights, biases, w_out,
                                  b_out, negative_slope);
  const int L = int(pr.width.size()) - 1;
  const int64_t N = pr.rows(), nr = pr.end[0], nf = pr.end[1] - pr.end[0];
  int64_t p0 = 0, p1 = 0;  // penalty rows of the stack
  if (penalty_side >= 0) {
    p0 = penalty_side == 0 ? 0 : pr.end[penalty_side - 1];
    p1 = pr.end[penalty_side];
  }
  const at::ScalarType dtype = real.scalar_type();
  const at::ScalarType acc_type = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const auto acc_opts = real.options().dtype(acc_type);
  // Every accumulator in one zero-filled buffer (one fill launch): stats (loss, penalty, mean
  // real, mean fake, db_out), c, dw_out, and on the fused path dW_l and db_l.
  const bool with_b = !pr.b.empty();
  int64_t acc_numel = 5 + N + pr.width[L];
  for (int l = 0; l < L; ++l) acc_numel += pr.width[l + 1] * (pr.width[l] + (with_b ? 1 : 0));
  at::Tensor acc = at::zeros({acc_numel}, acc_opts);
  int64_t acc_off = 0;
  const auto carve = [&](at::IntArrayRef shape) {
    const int64_t n = c10::multiply_integers(shape);
    at::Tensor t = acc.narrow(0, acc_off, n).view(shape);
    acc_off += n;
    return t;
  };
  at::Tensor stats = carve({5});
  at::Tensor c = carve({N});
  at::Tensor dw_out = carve({1, pr.width[L]});
  at::Tensor logits = at::empty({N}, acc_opts);
  std::vector<at::Tensor> dW(L), db(with_b ? L : 0);

  const Path forced = path_override();
  size_t bytes = 0;
  const int tile = forced == Path::WIDE ? 0 : fused_tile(pr, c10::elementSize(acc_type), true, &bytes);
  TORCH_CHECK(forced != Path::FUSED || tile > 0, "FASTGAN_CUDA_MLP_PATH=fused: this network does not fit the fused "
              "kernel's shared memory (at most ", kMaxDepth, " layers, widths <= 256, fewer for fp64)");
  const bool fused = tile > 0 && (forced == Path::FUSED || max_width(pr) <= 128);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mlp_disc_step_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const LossSpec<scalar_t> spec =
        loss_spec<scalar_t>(pr, nr, nf, term_real.empty() ? nullptr : &tr, term_fake.empty() ? nullptr : &tf);
    if (fused) {
      for (int l = 0; l < L; ++l) {
        dW[l] = carve({pr.width[l + 1], pr.width[l]});
        if (with_b) db[l] = carve({pr.width[l + 1]});
      }
      FusedParams<scalar_t, acc_t> p{};
      fused_loss<scalar_t, acc_t>(pr, tile, bytes, spec, paired, logits, c, stats, p);
      for (int l = 0; l < L; ++l) {
        p.dW[l] = dW[l].mutable_data_ptr<acc_t>();
        p.db[l] = pr.b.empty() ? nullptr : db[l].mutable_data_ptr<acc_t>();
      }
      p.dw_out = dw_out.mutable_data_ptr<acc_t>();
      p.penalty_sum = stats.mutable_data_ptr<acc_t>() + 1;
      p.pen_begin = p0;
      p.pen_end = p1;
      p.pen_kind = int(penalty_kind);
      p.pen_weight = acc_t(penalty_weight);
      p.pen_center = acc_t(penalty_center);
      launch_fused<scalar_t, acc_t, MODE_DISC>(pr, tile, bytes, 0, N, p);
      return;
    }
    const MatmulPrecisionScope precision(allow_tf32);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    std::vector<at::Tensor> h = wide_forward(pr, stacked_rows(pr), logits);
    launch_loss<scalar_t, acc_t>(logits, spec, paired, c, stats);
    std::vector<at::Tensor> v = wide_v_chain(pr, h);
    std::vector<at::Tensor> ubar;  // ubar_0..ubar_L on the penalty rows
    if (p1 > p0) {
      const int64_t P = p1 - p0;
      ubar.push_back(at::mm(v[0].narrow(0, p0, P), pr.W[0]));  // g, then gbar in place
      penalty_rows_kernel<scalar_t, acc_t><<<blocks_for(P, kWarps), kThreads, 0, stream>>>(
          ubar[0].mutable_data_ptr<scalar_t>(), P, K, int(penalty_kind), acc_t(penalty_weight),
          acc_t(penalty_center), stats.mutable_data_ptr<acc_t>() + 1);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      for (int l = 1; l <= L; ++l) {
        at::Tensor u = at::mm(ubar.back(), pr.W[l - 1].t());  // (P, H_l)
        mask_mul_kernel<scalar_t, acc_t><<<blocks_for(u.numel(), kThreads), kThreads, 0, stream>>>(
            u.mutable_data_ptr<scalar_t>(), u.const_data_ptr<scalar_t>(), pr.width[l],
            h[l].narrow(0, p0, P).const_data_ptr<scalar_t>(), P, pr.width[l], acc_t(pr.alpha));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        ubar.push_back(u);
      }
    }
    // Masks are no longer needed: h_l <- c h_l + ubar_l, the right operand of every dW.
    for (int l = 0; l <= L; ++l) {
      fold_operand_kernel<scalar_t, acc_t><<<blocks_for(h[l].numel(), kThreads), kThreads, 0, stream>>>(
          h[l].mutable_data_ptr<scalar_t>(), c.const_data_ptr<acc_t>(),
          ubar.empty() ? nullptr : ubar[l].const_data_ptr<scalar_t>(), p0, p1, N, pr.width[l]);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const dim3 col_grid_out(unsigned((pr.width[L] + 31) / 32), unsigned((N + kColRows - 1) / kColRows));
    colsum_kernel<scalar_t, acc_t><<<col_grid_out, kThreads, 0, stream>>>(
        h[L].const_data_ptr<scalar_t>(), nullptr, N, pr.width[L], dw_out.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    for (int l = 1; l <= L; ++l) {
      dW[l - 1] = at::mm(v[l - 1].t(), h[l - 1]);
      if (!pr.b.empty()) {
        db[l - 1] = carve({pr.width[l]});
        const dim3 col_grid(unsigned((pr.width[l] + 31) / 32), unsigned((N + kColRows - 1) / kColRows));
        colsum_kernel<scalar_t, acc_t><<<col_grid, kThreads, 0, stream>>>(
            v[l - 1].const_data_ptr<scalar_t>(), c.const_data_ptr<acc_t>(), N, pr.width[l],
            db[l - 1].mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  });

  const at::Tensor st = stats.to(dtype);
  std::vector<at::Tensor> out{st.narrow(0, 0, 4).clone()};
  for (const auto& t : dW) out.push_back(t.to(dtype));
  for (const auto& t : db) out.push_back(t.to(dtype));
  out.push_back(dw_out.to(dtype));
  if (pr.b_out) out.push_back(st.narrow(0, 4, 1).clone());
  return out;
}

std::vector<at::Tensor> mlp_gen_step_cuda(const at::Tensor& fake, const std::optional<at::Tensor>& real,
                                          at::TensorList weights, at::TensorList biases, const at::Tensor& w_out,
                                          const std::optional<at::Tensor>& b_out, double negative_slope,
                                          c10::ArrayRef<double> term, bool paired, bool allow_tf32) {
  TORCH_CHECK(fake.dim() == 2, "fastgan mlp_gen_step (cuda): fake must be (rows, K), got ", fake.sizes());
  const int64_t K = fake.size(1);
  check_rows(fake, fake, K, "fake");
  TORCH_CHECK(!paired || real.has_value(), "fastgan mlp_gen_step (cuda): paired losses need real");
  if (paired) {
    check_rows(*real, fake, K, "real");
    TORCH_CHECK(real->size(0) == fake.size(0), "fastgan mlp_gen_step (cuda): paired losses need as many real rows "
                "as fake rows, got ", real->size(0), " and ", fake.size(0));
  }
  const Term t = term.empty() ? Term{} : term_from(term, "term");
  const c10::cuda::CUDAGuard guard(fake.device());
  // Stack [real (paired only); fake]: the loss epilogue then treats the term as term_real on
  // r - f (paired) or as term_fake on the fake rows.
  const Problem pr = make_problem(paired ? *real : at::Tensor(), fake, at::Tensor(), weights, biases, w_out, b_out,
                                  negative_slope);
  const int L = int(pr.width.size()) - 1;
  const int64_t N = pr.rows(), nr = pr.end[0], nf = pr.end[1] - pr.end[0];
  const at::ScalarType dtype = fake.scalar_type();
  const at::ScalarType acc_type = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const auto acc_opts = fake.options().dtype(acc_type);
  at::Tensor acc = at::zeros({5 + N}, acc_opts);  // stats (as in mlp_disc_step), then c
  at::Tensor stats = acc.narrow(0, 0, 5);
  at::Tensor c = acc.narrow(0, 5, N);
  at::Tensor logits = at::empty({N}, acc_opts);
  at::Tensor grad;

  const Path forced = path_override();
  size_t bytes = 0;
  const int tile = forced == Path::WIDE ? 0 : fused_tile(pr, c10::elementSize(acc_type), false, &bytes);
  TORCH_CHECK(forced != Path::FUSED || tile > 0, "FASTGAN_CUDA_MLP_PATH=fused: this network does not fit the fused "
              "kernel's shared memory");
  const bool fused = tile > 0 && (forced == Path::FUSED || max_width(pr) <= 128);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mlp_gen_step_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const Term* tp = term.empty() ? nullptr : &t;
    const LossSpec<scalar_t> spec = loss_spec<scalar_t>(pr, nr, nf, paired ? tp : nullptr, paired ? nullptr : tp);
    if (fused) {
      FusedParams<scalar_t, acc_t> p{};
      fused_loss<scalar_t, acc_t>(pr, tile, bytes, spec, paired, logits, c, stats, p);
      grad = at::empty_like(pr.x[1]);
      p.grad = grad.mutable_data_ptr<scalar_t>();
      launch_fused<scalar_t, acc_t, MODE_GEN>(pr, tile, bytes, nr, N, p);
      return;
    }
    const MatmulPrecisionScope precision(allow_tf32);
    std::vector<at::Tensor> h = wide_forward(pr, stacked_rows(pr), logits);
    launch_loss<scalar_t, acc_t>(logits, spec, paired, c, stats);
    // Only the fake rows need the chain: fold c into it once, then grad = D_1 W_1.
    std::vector<at::Tensor> hf;
    for (const auto& hl : h) hf.push_back(hl.narrow(0, nr, nf));
    std::vector<at::Tensor> v = wide_v_chain(pr, hf);
    at::Tensor cf = c.narrow(0, nr, nf).to(dtype).unsqueeze(1);
    grad = at::mm(v[0], pr.W[0]).mul_(cf);
  });

  at::Tensor st = at::stack({stats[0], stats[3]}).to(dtype);
  return {st, grad};
}

#endif  // FASTGAN_CUDA_EMULATION
}  // namespace

#ifndef FASTGAN_CUDA_EMULATION
TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("mlp_disc_step", &mlp_disc_step_cuda);
  m.impl("mlp_gen_step", &mlp_gen_step_cuda);
}
#endif

}  // namespace fastgan
