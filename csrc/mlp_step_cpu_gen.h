// The generator step of the CPU fused MLP step (its op, mlp_gen_step_cpu, is in
// csrc/mlp_step_cpu.cpp): loss = sum_j term(f_j) (or term(r_j - f_j) when paired) and dloss/dfake,
// one block of fake rows (and their real partners when paired) at a time: the forward, c, the
// V chain scaled by c, and dfake = c g = (c v_1) W_1.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>

#include "loss_terms.h"
#include "mlp_step_cpu_block.h"

namespace fastgan {
namespace {

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

}  // namespace
}  // namespace fastgan
