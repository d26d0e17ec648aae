// The discriminator step of the CPU fused MLP step (its op, mlp_disc_step_cpu, is in
// csrc/mlp_step_cpu.cpp): one block's loss derivatives, V chain, penalty adjoint and gradients
// (by the narrow or the wide path), and the driver that runs every block and adds up the chunks.
//
// Closed form, per row (m_l = 1 where h_l > 0 else alpha; c = d loss / d o):
//   v_L = m_L * w_out, v_{l-1} = (v_l W_l) * m_{l-1}, g = v_1 W_1        (input gradient)
//   ubar_0 = k(|g|) g, ubar_l = (ubar_{l-1} W_l^T) * m_l               (penalty adjoint)
//   dW_l += v_l^T (c h_{l-1} + ubar_{l-1}), db_l += c v_l, dw_out += c h_L + ubar_L, db_out += c
// Dropout (mask lists given): h_l = leaky(z_l) * d_l with d_l the multiplier tensor of the row's
// block, and every factor m_l above becomes m_l * d_l (applied as (u * d_l) * m_l, autograd's order).
// Rows without a penalty carry c in the chain (c v_l is the ordinary backward delta) and use
// h_{l-1} itself as the right operand, so every layer takes ONE weight-gradient product.
//
// The chunks' partial sums are added in a fixed order (their number does not depend on the thread
// count), so results are bitwise reproducible.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "loss_terms.h"
#include "mlp_step_contract.h"
#include "mlp_step_cpu_block.h"
#include "mlp_step_cpu_narrow.h"
#include "mlp_step_cpu_wide.h"

namespace fastgan {
namespace {

using PenaltySpec = contract::Penalty;

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
  const double dbo = net.wide ? wide_block_grads(net, ws, S, p0, p1, job.has_bias, dW)
                              : narrow_block_grads(net, lay, ws, S, p0, p1, job.has_bias, dW, vslot);
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

// Every block of the step, chunk by chunk, then the chunks' sums in a fixed order: stats (loss,
// penalty, sums of the real and of the fake logits) and grads (the op's gradient outputs).
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
  if (net.wide) {
    wide_accumulators(net, job.has_bias, grads, dW.data());
  } else {
    for (int64_t ch = 0; ch < nchunks; ++ch)
      for (int64_t l = 1; l <= net.L; ++l) dW[ch * np + l] = slots.data() + ch * lay.size + lay.W[l];
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

}  // namespace
}  // namespace fastgan
