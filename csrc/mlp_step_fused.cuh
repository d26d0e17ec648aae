// The fused path of the CUDA MLP step (docs/DESIGN.md section 4; host code in mlp_step.cu):
// one kernel per pass, each block walks tiles of rows and keeps the weights, every activation of
// its tile and its weight-gradient accumulators in shared memory.
//
// Rows are stacked as X = [real; fake; penalty_input] (generator: [real (paired only); fake]);
// each group is a contiguous range of stacked row indices. Every row i has a loss derivative
// c_i = d loss / d o_i (0 on penalty_input rows) and the penalty rows are one contiguous range.
// With V_l = u_l * m_l (the input-gradient chain, u_L = w_out, u_{l-1} = V_l W_l) the weight
// gradients of loss + penalty are, for every row alike,
//   dW_l  = sum_i V_l,i^T (c_i h_{l-1},i + ubar_{l-1},i)      (ubar = 0 off the penalty rows)
//   db_l  = sum_i c_i V_l,i,   dw_out = sum_i (c_i h_L,i + ubar_L,i),   db_out = sum_i c_i
// where ubar_0 = gbar = dP/dg on the penalty rows and ubar_l = (ubar_{l-1} W_l^T) * m_l.
// (c_i V_l,i is the ordinary backward delta, so one product serves loss and penalty.)
// Dropout (FusedParams::dropout): h_l = leaky(z_l) * d_l with d_l the row group's multipliers,
// and every m_l above becomes m_l * d_l (applied as (u * d_l) * m_l, autograd's order): the
// forward, V chain and ubar chain epilogues read d_l from global memory where they apply it
// (rows past the end take d = 0), so a masked pass loads (rows, H_l) more per layer per chain.
//
// Unpaired losses: one pass computes each tile's logits, c and every backward product. Paired
// (relativistic) losses pair rows of different tiles, so a logits pass and the loss epilogue
// come first and the backward pass recomputes the forward. Products are FFMA in the
// accumulation type (fp32-accurate, fp64 exact). Each block writes its sums (stats, dW, db,
// dw_out) to its own row of a partials buffer; reduce_partials_kernel adds the rows in block
// order (no float atomics: bitwise reproducible).
// FASTGAN_CUDA_EMULATION (tests/cuda_emulation) compiles this file as CPU code.
#pragma once
#include "mlp_step_epilogue.cuh"

#ifndef FASTGAN_CUDA_EMULATION  // the emulator supplies its own nvcuda::wmma
#include <mma.h>
#endif
#ifndef FASTGAN_DYNAMIC_SMEM
#define FASTGAN_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif

namespace fastgan {
namespace {

// ------------------------------------------------------------------------------------------
// Fused path: one block per tile of rows, everything in shared memory
// ------------------------------------------------------------------------------------------

enum FusedMode : int { MODE_LOGITS = 0, MODE_DISC = 1, MODE_GEN = 2 };

// How the fused kernel multiplies (a template parameter of the kernel):
//   MMA_NONE   FFMA in acc_t from shared memory (fp64; and the default for the others)
//   MMA_TF32   tensor cores, WMMA m16n16k8, operands rounded to TF32, fp32 accumulation
//   MMA_TF32X3 split precision: a = a_hi + a_lo (both TF32), a b ~ a_hi b_hi + a_hi b_lo + a_lo b_hi,
//              three TF32 products with fp32 accumulation; error like fp32 FFMA
// With MMA every width is padded to a multiple of 16 with zeros (weights, dW, activations), the
// tile T is a multiple of 16 and every product of the tile runs as 16x16 output fragments, one
// warp per fragment.
enum MmaMode : int { MMA_NONE = 0, MMA_TF32 = 1, MMA_TF32X3 = 2 };

__host__ __device__ inline int pad16(int n) { return (n + 15) & ~15; }

template <typename scalar_t, typename acc_t>
struct FusedParams {
  const scalar_t* x[3];        // row groups, row-major (rows_g, K): real, fake, penalty_input (nullptr if absent)
  int64_t group_end[3];        // stacked row index one past each group: Nr, Nr + Nf, Nr + Nf + Np
  int depth;                   // L, hidden layers (1..kMaxDepth)
  int width[kMaxDepth + 1];    // H_0 = K, H_1..H_L
  const scalar_t* W[kMaxDepth];  // W_l, (H_l, H_{l-1}) row-major
  const scalar_t* b[kMaxDepth];  // b_l, (H_l,), or nullptr (no biases)
  const scalar_t* w_out;       // (H_L,)
  bool dropout;                // drop[][] given: dropout multipliers on every hidden layer
  const scalar_t* drop[3][kMaxDepth];  // per row group and layer: (rows_g, H_l) row-major, or nullptr
  acc_t alpha;                 // LeakyReLU negative slope
  int64_t row_begin, row_end;  // stacked rows this pass walks, in tiles of `tile` rows
  int64_t pen_begin, pen_end;  // stacked penalty rows (empty range: no penalty)
  float zero = 0.0f;           // 0, read at run time (never folded away: 0 * h is NaN for an infinite h)
  int pen_kind;                // PenaltyKind
  acc_t pen_weight, pen_center;
  int tile;                    // rows per tile (T)
  int ld;                      // leading dimension of every activation buffer (>= max width)
  acc_t* logits;               // MODE_LOGITS out: (N,) logits without b_out
  bool inline_loss;            // MODE_DISC/GEN: c from the tile's own logits (unpaired losses only)
  LossSpec<scalar_t> loss;     // terms, row counts, b_out (the terms are used with inline_loss)
  const acc_t* c;              // without inline_loss: (N,) d loss / d o from the loss epilogue
  bool has_bias;               // b[l] given (and db_l wanted)
  acc_t* partials;             // MODE_DISC/GEN out: (gridDim.x, PartialLayout::stride), row per block
  scalar_t* grad;              // MODE_GEN out: (row_end - row_begin, K), d loss / d x
};

__host__ __device__ inline int odd_ld(int n) { return n | 1; }  // odd strides spread smem banks

// Leading dimension of every activation buffer: odd (FFMA: spreads shared-memory banks), or
// the padded width + 4 (MMA: a multiple of 4 floats, as WMMA loads need, off the bank period).
__host__ __device__ inline int fused_ld(int max_width, bool mma) { return mma ? pad16(max_width) + 4 : odd_ld(max_width); }

// Shared-memory layout in acc_t elements; the host sizes the launch with the same function.
// W_l is stored (rows_l, ldw[l]) and dW_l (rows_l, lddw[l]); MMA pads rows and columns to 16
// (zeros) and starts every buffer on a 32-byte boundary.
struct FusedLayout {
  int w[kMaxDepth], b[kMaxDepth], dw[kMaxDepth], db[kMaxDepth];  // offsets per layer
  int ldw[kMaxDepth], lddw[kMaxDepth], rows[kMaxDepth];          // strides and stored rows per layer
  int w_out, dw_out;  // offsets of (H_L,) vectors
  int h, v, u;        // activation buffers: h_0..h_L, V_1..V_L, two ubar ping-pong buffers
  int c;              // (T,) per-row loss derivative
  int total;          // elements
};

__host__ __device__ inline FusedLayout fused_layout(int depth, const int* width, int tile, int ld, bool disc,
                                                    bool mma = false) {
  FusedLayout s{};
  int off = 0;
  const auto align = [&] {
    if (mma) off = (off + 7) & ~7;
  };
  for (int l = 0; l < depth; ++l) {
    s.ldw[l] = mma ? pad16(width[l]) + 4 : odd_ld(width[l]);
    s.lddw[l] = mma ? pad16(width[l]) + 4 : width[l];
    s.rows[l] = mma ? pad16(width[l + 1]) : width[l + 1];
    s.w[l] = off;
    off += s.rows[l] * s.ldw[l];
    align();
    s.b[l] = off;
    off += width[l + 1];
    align();
  }
  s.w_out = off;
  off += width[depth];
  align();
  for (int l = 0; l < depth; ++l) {
    s.dw[l] = off;
    off += disc ? s.rows[l] * s.lddw[l] : 0;
    align();
    s.db[l] = off;
    off += disc ? width[l + 1] : 0;
    align();
  }
  s.dw_out = off;
  off += disc ? width[depth] : 0;
  align();
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

// ---- tensor-core products (MMA_TF32, MMA_TF32X3) ------------------------------------------
namespace wmma = nvcuda::wmma;
template <bool ROW> struct WmmaLayout { using type = wmma::row_major; };
template <> struct WmmaLayout<false> { using type = wmma::col_major; };

template <typename Frag>
__device__ __forceinline__ void round_tf32(Frag& f) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = wmma::__float_to_tf32(f.x[i]);
}
// hi <- tf32(x), lo <- tf32(x - hi) (x - hi is exact).
template <typename Frag>
__device__ __forceinline__ void split_tf32(Frag& hi, Frag& lo) {
  for (int i = 0; i < hi.num_elements; ++i) {
    const float x = hi.x[i], h = wmma::__float_to_tf32(x);
    lo.x[i] = wmma::__float_to_tf32(x - h);
    hi.x[i] = h;
  }
}

// out (M x N, row-major, ldo) = [out +] A B over shared memory, M and N multiples of 16, K of 8:
// A(r, k) = a[r * lda + k] (A_ROW) or a[k * lda + r]; B(k, j) = b[k * ldb + j] (B_ROW) or
// b[j * ldb + k]. Warp w computes output fragments w, w + 8, ... (16x16 each), so every lane of
// a warp takes part in each collective WMMA call. No barrier inside.
template <int MMA, bool A_ROW, bool B_ROW>
__device__ __forceinline__ void block_mm(float* out, int ldo, const float* a, int lda, const float* b, int ldb, int M,
                                         int N, int K, bool accumulate) {
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, typename WmmaLayout<A_ROW>::type>;
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, typename WmmaLayout<B_ROW>::type>;
  using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;
  const int tn = N / 16, tiles = (M / 16) * tn;
  for (int t = threadIdx.x >> 5; t < tiles; t += kWarps) {
    const int i = (t / tn) * 16, j = (t % tn) * 16;
    FragC acc;
    if (accumulate) wmma::load_matrix_sync(acc, out + i * ldo + j, ldo, wmma::mem_row_major);
    else wmma::fill_fragment(acc, 0.0f);
    for (int k = 0; k < K; k += 8) {
      FragA fa;
      FragB fb;
      wmma::load_matrix_sync(fa, A_ROW ? a + i * lda + k : a + k * lda + i, lda);
      wmma::load_matrix_sync(fb, B_ROW ? b + k * ldb + j : b + j * ldb + k, ldb);
      if (MMA == MMA_TF32X3) {
        FragA fa_lo;
        FragB fb_lo;
        split_tf32(fa, fa_lo);
        split_tf32(fb, fb_lo);
        wmma::mma_sync(acc, fa, fb_lo, acc);  // small terms first
        wmma::mma_sync(acc, fa_lo, fb, acc);
      } else {
        round_tf32(fa);
        round_tf32(fb);
      }
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(out + i * ldo + j, acc, ldo, wmma::mem_row_major);
  }
}

// out[r, j] = epi(r, j, sum_k a[r, k] B[k, j]) for r < T, j < n_out, k < n_in, with B = W^T
// (NT: w is (n_out, n_in), row stride ldw) or B = W (NN: w is (n_in, n_out)); FFMA or tensor
// cores. With MMA the product covers the padded widths and the epilogue runs in place afterwards
// (entries past n_out keep the product, which is 0 because padded weights are 0). Block-uniform:
// every thread calls.
template <int MMA, bool NT, typename acc_t, typename Epi>
__device__ __forceinline__ void tile_product(acc_t* out, const acc_t* a, const acc_t* w, int ldw, int T, int n_out,
                                             int n_in, int ld, Epi epi) {
  if constexpr (MMA == MMA_NONE) {
    for (int e = threadIdx.x; e < T * n_out; e += blockDim.x) {
      const int r = e / n_out, j = e - r * n_out;
      const acc_t* ar = a + r * ld;
      acc_t s = 0;
      for (int k = 0; k < n_in; ++k) s += ar[k] * (NT ? w[j * ldw + k] : w[k * ldw + j]);
      out[r * ld + j] = epi(r, j, s);
    }
  } else {
    block_mm<MMA, true, !NT>(out, ld, a, ld, w, ldw, T, pad16(n_out), pad16(n_in), false);
    __syncthreads();
    for (int e = threadIdx.x; e < T * n_out; e += blockDim.x) {
      const int r = e / n_out, j = e - r * n_out;
      out[r * ld + j] = epi(r, j, out[r * ld + j]);
    }
  }
}

// One kernel for three passes over the stacked rows (see the file comment):
//   MODE_LOGITS: forward, logits[i] = h_L,i . w_out.
//   MODE_DISC:   forward, V chain, g = V_1 W_1 and gbar on penalty rows, ubar chain,
//                per-block dW/db/dw_out accumulation, written to the block's partial row.
//   MODE_GEN:    forward, V chain, grad_i = c_i V_1,i W_1.
template <typename scalar_t, typename acc_t, int MODE, int MMA = MMA_NONE>
__global__ void __launch_bounds__(kThreads, 1) fused_mlp_kernel(FusedParams<scalar_t, acc_t> p) {
  FASTGAN_DYNAMIC_SMEM(smem_raw);
  acc_t* sm = reinterpret_cast<acc_t*>(smem_raw);
  const int L = p.depth, T = p.tile, ld = p.ld;
  // Widths and buffer offsets are read with run-time layer indices: keep them in shared memory
  // (indexing the kernel parameters or a local struct would put them in local memory).
  __shared__ int width[kMaxDepth + 1];
  __shared__ const scalar_t* drop[3][kMaxDepth];
  __shared__ FusedLayout s;
  __shared__ PartialLayout q;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int l = 0; l <= kMaxDepth; ++l) width[l] = p.width[l];
#pragma unroll
    for (int g = 0; g < 3; ++g)
#pragma unroll
      for (int l = 0; l < kMaxDepth; ++l) drop[g][l] = p.drop[g][l];
    s = fused_layout(L, width, T, ld, MODE == MODE_DISC, MMA != MMA_NONE);
    q = partial_layout(L, width, p.has_bias, MODE == MODE_DISC);
  }
  __syncthreads();
  const int K = width[0];
  acc_t* const sH = sm + s.h;  // h_l at sH + l * T * ld
  acc_t* const sV = sm + s.v;  // V_l at sV + (l - 1) * T * ld
  acc_t* const sU = sm + s.u;  // ubar ping-pong: sU + (l % 2) * T * ld
  acc_t* const sC = sm + s.c;
  const acc_t alpha = p.alpha;
  const bool dropout = p.dropout;

  // Parameters into shared memory (padding included, as zeros), accumulators to zero.
#pragma unroll
  for (int l = 0; l < kMaxDepth; ++l) {  // unrolled: p.W[l], p.b[l] with constant indices
    if (l >= L) break;
    const int n_out = width[l + 1], n_in = width[l], ldw = s.ldw[l];
    for (int e = threadIdx.x; e < s.rows[l] * ldw; e += blockDim.x) {
      const int j = e / ldw, k = e - j * ldw;
      sm[s.w[l] + e] = j < n_out && k < n_in ? acc_t(p.W[l][j * n_in + k]) : acc_t(0);
    }
    if (MODE == MODE_DISC)
      for (int e = threadIdx.x; e < s.rows[l] * s.lddw[l]; e += blockDim.x) sm[s.dw[l] + e] = acc_t(0);
    for (int j = threadIdx.x; j < n_out; j += blockDim.x) {
      sm[s.b[l] + j] = p.b[l] ? acc_t(p.b[l][j]) : acc_t(0);
      if (MODE == MODE_DISC) sm[s.db[l] + j] = acc_t(0);
    }
  }
  for (int j = threadIdx.x; j < width[L]; j += blockDim.x) {
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
    // u * d_l(r, j): the dropout multiplier of tile row r, unit j of hidden layer l (1..L);
    // u itself without dropout, 0 on rows past the end.
    const auto dropped = [&](acc_t u, int l, int r, int j) -> acc_t {
      if (!dropout) return u;
      if (r >= n) return acc_t(0);
      const int64_t i = r0 + r;
      const int g = i < p.group_end[0] ? 0 : (i < p.group_end[1] ? 1 : 2);
      const int64_t local = g == 0 ? i : i - (g == 1 ? p.group_end[0] : p.group_end[1]);
      return u * acc_t(drop[g][l - 1][local * width[l] + j]);
    };

    // h_0: the tile's input rows (rows past the end are zero and get c = 0, so add nothing;
    // MMA: columns up to pad16(K) are zero too).
    const int Kp = MMA != MMA_NONE ? pad16(K) : K;
    for (int e = threadIdx.x; e < T * Kp; e += blockDim.x) {
      const int r = e / Kp, k = e - r * Kp;
      acc_t v = 0;
      if (r < n && k < K) {
        const int64_t i = r0 + r;
        const int g = i < p.group_end[0] ? 0 : (i < p.group_end[1] ? 1 : 2);
        const int64_t local = g == 0 ? i : i - (g == 1 ? p.group_end[0] : p.group_end[1]);
        v = acc_t((g == 0 ? p.x[0] : g == 1 ? p.x[1] : p.x[2])[local * K + k]);
      }
      sH[r * ld + k] = v;
    }
    __syncthreads();

    // Forward: h_l = leaky(h_{l-1} W_l^T + b_l) [* d_l].
    for (int l = 1; l <= L; ++l) {
      const acc_t* bias = sm + s.b[l - 1];
      tile_product<MMA, true>(sH + l * T * ld, sH + (l - 1) * T * ld, sm + s.w[l - 1], s.ldw[l - 1], T, width[l],
                 width[l - 1], ld, [&](int r, int j, acc_t z) { return dropped(leaky(z + bias[j], alpha), l, r, j); });
      __syncthreads();
    }

    // Logits (one warp per row) for pass 1 or for the inline loss; else c from the epilogue.
    if (MODE == MODE_LOGITS || p.inline_loss) {
      const int lane = threadIdx.x & 31, HL = width[L];
      for (int r = threadIdx.x >> 5; r < T; r += kWarps) {
        acc_t o = 0;
        for (int j = lane; j < HL; j += 32) o += sH[L * T * ld + r * ld + j] * sm[s.w_out + j];
        o = warp_sum(o);
        if (lane == 0 && MODE == MODE_LOGITS && r < n) p.logits[r0 + r] = o;
        if (lane == 0 && MODE != MODE_LOGITS) sC[r] = r < n ? sums.add_row(p.loss, r0 + r, o + b_out) : acc_t(0);
      }
    } else {
      // c from the loss epilogue, which covers the loss rows only (penalty_input rows: 0).
      const int64_t loss_end = p.loss.nr + p.loss.nf;
      for (int r = threadIdx.x; r < T; r += blockDim.x) sC[r] = r < n && r0 + r < loss_end ? p.c[r0 + r] : acc_t(0);
    }
    __syncthreads();
    if (MODE == MODE_LOGITS) continue;

    // V chain: V_L = (w_out [* d_L]) * m_L; V_{l-1} = ((V_l W_l) [* d_{l-1}]) * m_{l-1}.
    {
      const int HL = width[L], HLp = MMA != MMA_NONE ? pad16(HL) : HL;  // MMA: padding zeroed
      acc_t* vL = sV + (L - 1) * T * ld;
      const acc_t* hL = sH + L * T * ld;
      for (int e = threadIdx.x; e < T * HLp; e += blockDim.x) {
        const int r = e / HLp, j = e - r * HLp;
        vL[r * ld + j] = j < HL ? dropped(sm[s.w_out + j], L, r, j) * mask_of(hL[r * ld + j], alpha) : acc_t(0);
      }
      __syncthreads();
    }
    for (int l = L; l >= 2; --l) {
      const acc_t* h = sH + (l - 1) * T * ld;
      tile_product<MMA, false>(sV + (l - 2) * T * ld, sV + (l - 1) * T * ld, sm + s.w[l - 1], s.ldw[l - 1], T,
                 width[l - 1], width[l], ld,
                 [&](int r, int k, acc_t u) { return dropped(u, l - 1, r, k) * mask_of(h[r * ld + k], alpha); });
      __syncthreads();
    }

    if (MODE == MODE_GEN) {
      // grad_i = c_i g_i with g = V_1 W_1 (ubar buffer 0 holds g), written to global memory.
      tile_product<MMA, false>(sU, sV, sm + s.w[0], s.ldw[0], T, K, width[1], ld, [](int, int, acc_t g) { return g; });
      __syncthreads();
      for (int e = threadIdx.x; e < n * K; e += blockDim.x) {
        const int r = e / K, k = e - r * K;
        p.grad[(r0 - p.row_begin + r) * K + k] = scalar_t(sC[r] * sU[r * ld + k]);
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
      tile_product<MMA, false>(u0, sV, sm + s.w[0], s.ldw[0], T, K, width[1], ld, [](int, int, acc_t g) { return g; });
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
      // ubar_l = ((ubar_{l-1} W_l^T) [* d_l]) * m_l; once ubar_{l-1} is known, h_{l-1} <- c h_{l-1} + ubar_{l-1},
      // plus autograd's 0 * h_{l-1} on penalty rows (the zero double backward of the masks: 0 for a
      // finite h, NaN for an infinite one, as in the reference).
      const acc_t zero = p.zero;
      for (int l = 1; l <= L; ++l) {
        const acc_t* h = sH + l * T * ld;
        const acc_t* prev = sU + ((l - 1) & 1) * T * ld;
        tile_product<MMA, true>(sU + (l & 1) * T * ld, prev, sm + s.w[l - 1], s.ldw[l - 1], T, width[l],
                   width[l - 1], ld,
                   [&](int r, int j, acc_t z) { return dropped(z, l, r, j) * mask_of(h[r * ld + j], alpha); });
        acc_t* hp = sH + (l - 1) * T * ld;
        const int W = width[l - 1];
        for (int e = threadIdx.x; e < T * W; e += blockDim.x) {
          const int r = e / W, k = e - r * W;
          const acc_t hv = hp[r * ld + k];
          hp[r * ld + k] = sC[r] * hv + prev[r * ld + k] + (r >= pa && r < pb ? zero * hv : acc_t(0));
        }
        __syncthreads();
      }
      acc_t* hL = sH + L * T * ld;
      const acc_t* uL = sU + (L & 1) * T * ld;
      // penalty-input rows (past the loss rows) have no loss term: their h_L is never multiplied
      const int64_t loss_rows = p.loss.nr + p.loss.nf;
      for (int e = threadIdx.x; e < T * width[L]; e += blockDim.x) {
        const int r = e / width[L], j = e - r * width[L];
        hL[r * ld + j] = (r0 + r >= loss_rows && r >= pa && r < pb ? acc_t(0) : sC[r] * hL[r * ld + j]) + uL[r * ld + j];
      }
    } else {
      for (int l = 0; l <= L; ++l) {
        acc_t* h = sH + l * T * ld;
        const int W = width[l];
        for (int e = threadIdx.x; e < T * W; e += blockDim.x) {
          const int r = e / W, k = e - r * W;
          h[r * ld + k] *= sC[r];
        }
      }
    }
    __syncthreads();

    // Accumulate: dW_l += V_l^T B_{l-1}, db_l += c^T V_l, dw_out += colsum B_L (B = folded sH).
    // Each accumulator entry (FFMA) or 16x16 fragment (MMA) belongs to one thread or warp, so
    // no atomics in shared memory.
    for (int l = 1; l <= L; ++l) {
      const int n_out = width[l], n_in = width[l - 1];
      const acc_t* v = sV + (l - 1) * T * ld;
      const acc_t* bop = sH + (l - 1) * T * ld;
      acc_t* dw = sm + s.dw[l - 1];
      if constexpr (MMA != MMA_NONE) {
        block_mm<MMA, false, true>(dw, s.lddw[l - 1], v, ld, bop, ld, pad16(n_out), pad16(n_in), T, true);
      } else {
        for (int e = threadIdx.x; e < n_out * n_in; e += blockDim.x) {
          const int j = e / n_in, k = e - j * n_in;
          acc_t acc = 0;
          for (int r = 0; r < T; ++r) acc += v[r * ld + j] * bop[r * ld + k];
          dw[j * s.lddw[l - 1] + k] += acc;
        }
      }
      if (p.has_bias) {
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
      for (int j = threadIdx.x; j < width[L]; j += blockDim.x) {
        acc_t acc = 0;
        for (int r = 0; r < T; ++r) acc += bop[r * ld + j];
        sm[s.dw_out + j] += acc;
      }
    }
    __syncthreads();
  }

  if (MODE == MODE_LOGITS) return;
  // This block's row of partial sums (every slot written: no pre-zeroed buffer).
  acc_t* part = p.partials + int64_t(blockIdx.x) * q.stride;
  if (MODE == MODE_DISC) {
    for (int l = 0; l < L; ++l) {
      const int n_out = width[l + 1], n_in = width[l];
      for (int e = threadIdx.x; e < n_out * n_in; e += blockDim.x) {
        const int j = e / n_in, k = e - j * n_in;
        part[q.dw[l] + e] = sm[s.dw[l] + j * s.lddw[l] + k];
      }
      if (p.has_bias)
        for (int j = threadIdx.x; j < n_out; j += blockDim.x) part[q.db[l] + j] = sm[s.db[l] + j];
    }
    for (int j = threadIdx.x; j < width[L]; j += blockDim.x) part[q.dw_out + j] = sm[s.dw_out + j];
  }
  penalty_acc = block_sum(penalty_acc);
  sums.write(part);  // zeros without inline_loss (the loss epilogue holds the stats then)
  if (threadIdx.x == 0) part[1] = penalty_acc;
}

}  // namespace
}  // namespace fastgan
