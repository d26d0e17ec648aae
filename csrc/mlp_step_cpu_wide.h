// The wide path of the CPU fused MLP step's discriminator. Networks whose weights take more than
// kWideBytes (mlp_step_cpu_block.h) would make kChunks partial sums costly (memory, and their
// sum) and row blocks of about kBlockBytes too short for efficient products. They take one
// accumulator (the outputs themselves, blocks added in order), blocks of about kWideRows stacked
// rows, and every product split into fixed tiles of output rows or columns (gemm_par,
// mlp_step_cpu_blas.h: each tile one BLAS call) run in parallel, with the row-wise elementwise
// steps split over rows (FASTGAN_FOR_ROWS, mlp_step_cpu_block.h): tiles and splits depend on the
// shapes alone, so results stay independent of the thread count. Bias and w_out gradients are then
// products too (float accumulation, like the weights), instead of the narrow path's double row
// sums. Here: the outputs made the accumulators, and what one block adds to them.
#pragma once
#include <algorithm>
#include <vector>

#include "mlp_step_cpu_block.h"

namespace fastgan {
namespace {

// The accumulators: the outputs grads (W_1..W_L, then b_1..b_L with biases, then w_out), zeroed;
// dW[l] the W_l gradient, dW[L + l] b_l's (with biases), dW[0] w_out's.
template <typename T>
void wide_accumulators(const Net<T>& net, bool has_bias, std::vector<T*>& grads, T** dW) {
  for (int64_t l = 1; l <= net.L; ++l) {
    dW[l] = grads[l - 1];
    std::fill(grads[l - 1], grads[l - 1] + net.width[l] * net.width[l - 1], T(0));
    if (has_bias) {
      dW[net.L + l] = grads[net.L + l - 1];
      std::fill(dW[net.L + l], dW[net.L + l] + net.width[l], T(0));
    }
  }
  dW[0] = grads[(has_bias ? 2 : 1) * net.L];
  std::fill(dW[0], dW[0] + net.width[net.L], T(0));
}

// One block's share of the gradients, added into the outputs (see wide_accumulators), every one
// a tiled product over the block's S stacked rows; returns the block's share of db_out. Rows
// [p0, p1) carry a penalty (see disc_block).
template <typename T>
FASTGAN_INLINE double wide_block_grads(const Net<T>& net, Workspace<T>& ws, int64_t S, int64_t p0, int64_t p1,
                                       bool has_bias, T* const* dW) {
  const int64_t L = net.L, wl = net.width[L];
  const T* c = ws.c;
  // vectors too as products, into dW[L + l] (db_l) and dW[0] (dw_out)
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
    if (has_bias) mm<T>(true, true, false, wo, 1, S, T(1), ws.V[l], wo, s, 1, T(1), dW[L + l], 1);
  }
  mm<T>(true, true, false, wl, 1, S, T(1), ws.H[L], wl, s2, 1, T(1), dW[0], 1);
  return dbo;
}

}  // namespace
}  // namespace fastgan
