// The narrow path of the CPU fused MLP step's discriminator (networks whose weights take at most
// kWideBytes, mlp_step_cpu_block.h): blocks run in parallel, grouped in a fixed number of chunks
// (kChunks, whatever the thread count), and every chunk has its own partial sums of every
// parameter gradient, which disc_kernel (mlp_step_cpu_disc.h) adds in chunk order: results are
// bitwise reproducible. Here: the layout of a chunk's partial sums and what one block adds to them
// (weight matrices by one product per layer, vectors as row sums in double).
#pragma once
#include <vector>

#include "mlp_step_cpu_block.h"

namespace fastgan {
namespace {

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

// One block's share of the gradients, into its chunk's partial sums: dW[l] (W_l: one product over
// the block's S stacked rows) and vslot (b_l, w_out: row sums in double); returns the block's
// share of db_out. Rows [p0, p1) carry a penalty: there the chain holds v_l and the operand
// c h + ubar (see disc_block), elsewhere c v_l and h.
template <typename T>
FASTGAN_INLINE double narrow_block_grads(const Net<T>& net, const GradLayout& lay, const Workspace<T>& ws, int64_t S,
                                         int64_t p0, int64_t p1, bool has_bias, T* const* dW, double* vslot) {
  const int64_t L = net.L, wl = net.width[L];
  const T* c = ws.c;
  for (int64_t l = 1; l <= L; ++l) {
    const int64_t wi = net.width[l - 1], wo = net.width[l];
    mm<T>(false, true, false, wo, wi, S, T(1), ws.V[l], wo, ws.H[l - 1], wi, T(1), dW[l], wi);
    if (has_bias) {
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
  return dbo;
}

}  // namespace
}  // namespace fastgan
