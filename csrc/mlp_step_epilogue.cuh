// Device code shared by both CUDA paths of the fused MLP step (docs/DESIGN.md section 4): the
// LeakyReLU maths, the loss epilogue (c_i = d loss / d o_i and the stats from the logits) and the
// ordered reduction that turns per-block partial sums into the op's outputs.
//
// Determinism: nothing here uses float atomics. The loss epilogue is one block whose threads
// take fixed rows and whose sums are combined in a fixed tree; the reduction adds the partial
// rows of blocks 0, 1, 2, ... in that order. With a fixed grid (it depends only on the device
// and the shapes) the outputs are bitwise reproducible however the hardware schedules blocks.
// FASTGAN_CUDA_EMULATION (tests/cuda_emulation) compiles this file as CPU code.
#pragma once
#include "cuda_utils.cuh"
#include "loss_terms.h"

namespace fastgan {
namespace {

constexpr int kMaxDepth = 8;   // fused path: at most this many hidden layers
constexpr int kThreads = 256;  // every kernel here: 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kStats = 5;      // partial-row slots: loss, penalty, sum real logits, sum fake logits, sum c

// LeakyReLU mask from the activation: h > 0 exactly when z > 0 (alpha >= 0), so h carries m.
template <typename acc_t>
__device__ __forceinline__ acc_t mask_of(acc_t h, acc_t alpha) {
  return h > acc_t(0) ? acc_t(1) : alpha;
}
template <typename acc_t>
__device__ __forceinline__ acc_t leaky(acc_t z, acc_t alpha) {
  return z > acc_t(0) ? z : alpha * z;
}

// The loss terms of the stacked rows (what c_i and the stats depend on).
template <typename scalar_t>
struct LossSpec {
  const scalar_t* b_out;    // (1,) or nullptr
  int64_t nr, nf;           // real rows [0, nr), fake rows [nr, nr + nf) of the stack
  Term term_real;           // on real logits, or on r - f when paired
  Term term_fake;           // on fake logits (unused when paired)
  bool has_real, has_fake;  // whether each term is present
};

// Per-thread partial sums of the stats; write() stores the block's totals in slots 0, 2, 3, 4
// of its partial row (loss, sum of real logits, sum of fake logits, sum of c = d loss / d b_out).
// Every thread of the block must call write().
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

  __device__ __forceinline__ void write(acc_t* part) {
    const acc_t l = block_sum(loss), r = block_sum(real_sum), f = block_sum(fake_sum), c = block_sum(c_sum);
    if (threadIdx.x == 0) {
      part[0] = l;
      part[2] = r;
      part[3] = f;
      part[4] = c;
    }
  }
};

template <typename scalar_t, typename acc_t>
struct LossParams {
  const acc_t* logits;         // (N,) stacked logits without b_out
  LossSpec<scalar_t> spec;     // terms, row counts, b_out
  bool paired;                 // relativistic: term_real(r_i - f_i), nr == nf
  acc_t* c;                    // (N,) out: d loss / d o_i on rows [0, nr + nf)
  acc_t* stats;                // (kStats,) out: slots 0, 2, 3, 4 written, slot 1 (penalty) set to 0
};

// c_i and the stats from the logits. ONE block (launch with grid 1): thread t takes rows
// t, t + blockDim, ... and block_sum combines them in a fixed order, so no atomics and no
// pre-zeroed buffers. Rows of the penalty_input group are not touched.
template <typename scalar_t, typename acc_t>
__global__ void loss_epilogue_kernel(LossParams<scalar_t, acc_t> p) {
  const LossSpec<scalar_t>& s = p.spec;
  const acc_t bo = s.b_out ? acc_t(s.b_out[0]) : acc_t(0);
  LossSums<acc_t> sums;
  const int64_t n = p.paired ? s.nr : s.nr + s.nf;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    if (p.paired) {
      const acc_t r = p.logits[i] + bo, f = p.logits[s.nr + i] + bo;
      sums.real_sum += r;
      sums.fake_sum += f;
      acc_t d = 0;
      if (s.has_real) {
        d = term_derivative<acc_t>(s.term_real, r - f);
        sums.loss += term_value<acc_t>(s.term_real, r - f);
      }
      p.c[i] = d;
      p.c[s.nr + i] = -d;
      sums.c_sum += d - d;  // d loss / d b_out: 0, but NaN where d is NaN or Inf (as autograd's c_i + (-c_i))
    } else {
      p.c[i] = sums.add_row(s, i, p.logits[i] + bo);
    }
  }
  sums.write(p.stats);
  if (threadIdx.x == 0) p.stats[1] = acc_t(0);
}

// One block's row of partial sums: [kStats stats | dW_1..dW_L | db_1..db_L | dw_out] for the
// discriminator (with_dW false: no dW, the wide path's products make them), the stats alone for
// the generator. Kernels and the host lay out the buffer with this one function.
struct PartialLayout {
  int dw[kMaxDepth], db[kMaxDepth], dw_out, stride;
};

__host__ __device__ inline PartialLayout partial_layout(int depth, const int* width, bool bias, bool disc,
                                                        bool with_dW = true) {
  PartialLayout s{};
  int off = kStats;
  for (int l = 0; l < depth; ++l) {
    s.dw[l] = off;
    off += disc && with_dW ? width[l + 1] * width[l] : 0;
  }
  for (int l = 0; l < depth; ++l) {
    s.db[l] = off;
    off += disc && bias ? width[l + 1] : 0;
  }
  s.dw_out = off;
  off += disc ? width[depth] : 0;
  s.stride = off;
  return s;
}

// ------------------------------------------------------------------------------------------
// Ordered reduction of per-block partial rows into the op's outputs
// ------------------------------------------------------------------------------------------

constexpr int kMaxSegments = 2 * kMaxDepth + 1;  // dW_1..dW_L, db_1..db_L, dw_out

// partials: (blocks, stride) rows laid out as [kStats stats | segment 0 | segment 1 | ...].
template <typename scalar_t, typename acc_t>
struct ReduceParams {
  const acc_t* partials;
  int blocks, stride;
  const acc_t* extra;                   // (kStats,) added to the stats (paired loss epilogue), or nullptr
  int segments;                         // entries [seg_begin[s], seg_begin[s + 1]) go to seg_out[s]
  int seg_begin[kMaxSegments + 1];
  scalar_t* seg_out[kMaxSegments];
  scalar_t* stats_out;                  // disc: (loss, penalty, mean real, mean fake); gen: (loss, mean fake)
  bool gen;
  scalar_t* b_out_grad;                 // (1,) <- sum c (disc with b_out), or nullptr
  acc_t inv_nr, inv_nf;                 // 1 / rows of each side (0 when a side has no rows)
};

template <typename scalar_t, typename acc_t>
__global__ void reduce_partials_kernel(ReduceParams<scalar_t, acc_t> p) {
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < p.stride; e += gridDim.x * blockDim.x) {
    acc_t s = 0;
    for (int b = 0; b < p.blocks; ++b) s += p.partials[int64_t(b) * p.stride + e];
    if (e < kStats) {
      if (p.extra) s += p.extra[e];
      if (p.gen) {
        if (e == 0) p.stats_out[0] = scalar_t(s);
        if (e == 3) p.stats_out[1] = scalar_t(s * p.inv_nf);
      } else if (e < 4) {
        p.stats_out[e] = scalar_t(e == 2 ? s * p.inv_nr : e == 3 ? s * p.inv_nf : s);
      } else if (p.b_out_grad) {
        p.b_out_grad[0] = scalar_t(s);
      }
      continue;
    }
    int g = 0;
    while (g + 1 < p.segments && e >= p.seg_begin[g + 1]) ++g;
    if (g < p.segments && e >= p.seg_begin[g]) p.seg_out[g][e - p.seg_begin[g]] = scalar_t(s);
  }
}

}  // namespace
}  // namespace fastgan
