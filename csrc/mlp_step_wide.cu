// The wide path of the CUDA MLP step (docs/DESIGN.md section 4; the op is in mlp_step.cu): for
// networks too large for the fused kernel's shared memory. The products go through ATen (at::mm,
// i.e. cuBLAS; TF32 only when allow_tf32) and custom kernels do every elementwise epilogue
// (bias + LeakyReLU, masks, penalty row norms and gbar, the c*h + ubar operand, bias / w_out
// column reductions); the loss epilogue and the final reduction are the fused path's
// (mlp_step_epilogue.cuh). The notation is mlp_step_fused.cuh's. Not bitwise reproducible: the
// penalty sum and the column reductions add per-block sums with atomics. Dropout: the masks are
// stacked like the rows (one (N, H_l) tensor per layer) and applied by the bias + LeakyReLU and
// mask epilogues (h_l = leaky(z_l) * d_l, factor (u * d_l) * m_l).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "mlp_step_host.cuh"

namespace fastgan {
namespace {

// h = leaky(z + b) [* d] in place; z (rows, cols) row-major, b (cols,) or nullptr, d (rows, cols)
// dropout multipliers or nullptr.
template <typename scalar_t, typename acc_t>
__global__ void bias_leaky_kernel(scalar_t* __restrict__ z, const scalar_t* __restrict__ b,
                                  const scalar_t* __restrict__ d, int64_t rows, int64_t cols, acc_t alpha) {
  const int64_t n = rows * cols;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    acc_t v = acc_t(z[e]);
    if (b) v += acc_t(b[e % cols]);
    v = leaky(v, alpha);
    if (d) v *= acc_t(d[e]);
    z[e] = scalar_t(v);
  }
}

// out[i, j] = (u[i * u_stride + j] [* d[i, j]]) * m(h[i, j]); u_stride = 0 broadcasts one row
// (w_out); d (rows, cols) dropout multipliers or nullptr. out may alias u (in place) when
// u_stride == cols.
template <typename scalar_t, typename acc_t>
__global__ void mask_mul_kernel(scalar_t* out, const scalar_t* u, int64_t u_stride, const scalar_t* __restrict__ h,
                                const scalar_t* __restrict__ d, int64_t rows, int64_t cols, acc_t alpha) {
  const int64_t n = rows * cols;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / cols, j = e - i * cols;
    acc_t v = acc_t(u[i * u_stride + j]);
    if (d) v *= acc_t(d[e]);
    out[e] = scalar_t(v * mask_of(acc_t(h[e]), alpha));
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
// On penalty rows, as autograd: of a dW operand (h_{l-1}, zero_path) plus 0 * h (the zero double
// backward of the masks: NaN for an infinite h); of dw_out (h_L) on penalty-input rows (no_loss:
// no loss term) ubar alone, their h_L never multiplied. `zero` is 0 passed at run time.
template <typename scalar_t, typename acc_t>
__global__ void fold_operand_kernel(scalar_t* __restrict__ h, const acc_t* __restrict__ c,
                                    const scalar_t* __restrict__ ubar, int64_t p0, int64_t p1, int64_t rows,
                                    int64_t cols, bool zero_path, bool no_loss, acc_t zero) {
  const int64_t n = rows * cols;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / cols, j = e - i * cols;
    const acc_t hv = acc_t(h[e]);
    const bool pen = ubar && i >= p0 && i < p1;
    acc_t v = pen && no_loss ? acc_t(0) : c[i] * hv;
    if (pen) {
      v += acc_t(ubar[(i - p0) * cols + j]);
      if (zero_path) v += zero * hv;
    }
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

using cuda_mlp::Problem;

at::Tensor stacked_rows(const Problem& pr) {
  std::vector<at::Tensor> parts;
  for (const auto& x : pr.x)
    if (x.defined()) parts.push_back(x);
  return parts.size() == 1 ? parts[0].clone() : at::cat(parts, 0);
}

// The dropout multipliers of layer l (0-based) on rows [r0, r0 + rows) of d (stacked masks), or
// nullptr without dropout.
template <typename scalar_t>
const scalar_t* drop_rows(const std::vector<at::Tensor>& d, int l, int64_t r0, int64_t rows) {
  return d.empty() ? nullptr : d[l].narrow(0, r0, rows).template const_data_ptr<scalar_t>();
}

// Forward: every h_l (N, H_l) in the input dtype (h_0 = X), and the logits (N,) in acc dtype;
// d: the stacked dropout masks (empty: none).
template <typename scalar_t, typename acc_t>
std::vector<at::Tensor> wide_forward(const Problem& pr, const at::Tensor& X, const std::vector<at::Tensor>& d,
                                     at::Tensor& logits) {
  const int L = pr.depth();
  const int64_t N = X.size(0);
  std::vector<at::Tensor> h{X};
  for (int l = 0; l < L; ++l) {
    at::Tensor z = at::mm(h.back(), pr.W[l].t());
    bias_leaky_kernel<scalar_t, acc_t><<<blocks_for(z.numel(), kThreads), kThreads, 0,
                                         c10::cuda::getCurrentCUDAStream()>>>(
        z.mutable_data_ptr<scalar_t>(), pr.b.empty() ? nullptr : pr.b[l].const_data_ptr<scalar_t>(),
        drop_rows<scalar_t>(d, l, 0, N), N, pr.width(l + 1), acc_t(pr.net.alpha));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    h.push_back(z);
  }
  logits.copy_(at::mm(h.back(), pr.w_out.t()).reshape({N}));
  return h;
}

// V chain over the rows of h (rows [r0, r0 + N) of the stack; d: the stacked dropout masks or
// empty): V_L = (w_out [* d_L]) * m_L, V_{l-1} = ((V_l W_l) [* d_{l-1}]) * m_{l-1}. Returns V_1..V_L.
template <typename scalar_t, typename acc_t>
std::vector<at::Tensor> wide_v_chain(const Problem& pr, const std::vector<at::Tensor>& h,
                                     const std::vector<at::Tensor>& d, int64_t r0) {
  const int L = pr.depth();
  const int64_t N = h[0].size(0);
  const acc_t alpha = acc_t(pr.net.alpha);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  std::vector<at::Tensor> v(L);
  v[L - 1] = at::empty_like(h[L]);
  mask_mul_kernel<scalar_t, acc_t><<<blocks_for(v[L - 1].numel(), kThreads), kThreads, 0, stream>>>(
      v[L - 1].mutable_data_ptr<scalar_t>(), pr.w_out.const_data_ptr<scalar_t>(), 0, h[L].const_data_ptr<scalar_t>(),
      drop_rows<scalar_t>(d, L - 1, r0, N), N, pr.width(L), alpha);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  for (int l = L; l >= 2; --l) {
    at::Tensor u = at::mm(v[l - 1], pr.W[l - 1]);  // (N, H_{l-1})
    mask_mul_kernel<scalar_t, acc_t><<<blocks_for(u.numel(), kThreads), kThreads, 0, stream>>>(
        u.mutable_data_ptr<scalar_t>(), u.const_data_ptr<scalar_t>(), pr.width(l - 1),
        h[l - 1].const_data_ptr<scalar_t>(), drop_rows<scalar_t>(d, l - 2, r0, N), N, pr.width(l - 1), alpha);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    v[l - 2] = u;
  }
  return v;
}

template <typename scalar_t, typename acc_t>
std::vector<at::Tensor> disc_step(const Problem& pr, const contract::DiscArgs& a, bool allow_tf32) {
  const int L = pr.depth();
  const int64_t N = pr.rows(), K = pr.width(0);
  const acc_t alpha = acc_t(pr.net.alpha);
  int64_t p0 = 0, p1 = 0;  // penalty rows of the stack
  if (a.pen.active()) {
    p0 = a.pen.side == 0 ? 0 : pr.end[a.pen.side - 1];
    p1 = pr.end[a.pen.side];
  }
  const auto acc_opts = pr.x[1].options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  // One zero-filled accumulator: stats (kStats), dw_out, db_1..db_L, then c.
  int64_t n_acc = kStats + pr.width(L) + N;
  for (int l = 1; l <= L && !pr.b.empty(); ++l) n_acc += pr.width(l);
  at::Tensor acc = at::zeros({n_acc}, acc_opts);
  acc_t* const row = acc.mutable_data_ptr<acc_t>();
  at::Tensor dw_out = acc.narrow(0, kStats, pr.width(L)).view({1, pr.width(L)});
  std::vector<at::Tensor> db;
  int64_t off = kStats + pr.width(L);
  for (int l = 1; l <= L && !pr.b.empty(); ++l) {
    db.push_back(acc.narrow(0, off, pr.width(l)));
    off += pr.width(l);
  }
  acc_t* const c = row + off;
  at::Tensor logits = at::empty({N}, acc_opts);
  cuda_mlp::DiscOutputs o = cuda_mlp::disc_outputs(pr, pr.x[1].options(), /*with_params=*/false);

  const MatmulPrecisionScope precision(allow_tf32);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const std::vector<at::Tensor> d = cuda_mlp::stacked_masks(pr);
  std::vector<at::Tensor> h = wide_forward<scalar_t, acc_t>(pr, stacked_rows(pr), d, logits);
  cuda_mlp::launch_loss<scalar_t, acc_t>(logits.const_data_ptr<acc_t>(),
                                         cuda_mlp::loss_spec<scalar_t>(pr, a.has_real ? &a.term_real : nullptr,
                                                                       a.has_fake ? &a.term_fake : nullptr),
                                         a.paired, c, row);
  std::vector<at::Tensor> v = wide_v_chain<scalar_t, acc_t>(pr, h, d, 0);
  std::vector<at::Tensor> ubar;  // ubar_0..ubar_L on the penalty rows
  if (p1 > p0) {
    const int64_t P = p1 - p0;
    ubar.push_back(at::mm(v[0].narrow(0, p0, P), pr.W[0]));  // g, then gbar in place
    penalty_rows_kernel<scalar_t, acc_t><<<blocks_for(P, kWarps), kThreads, 0, stream>>>(
        ubar[0].mutable_data_ptr<scalar_t>(), P, K, a.pen.kind, acc_t(a.pen.weight), acc_t(a.pen.center), row + 1);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    for (int l = 1; l <= L; ++l) {
      at::Tensor u = at::mm(ubar.back(), pr.W[l - 1].t());  // (P, H_l)
      mask_mul_kernel<scalar_t, acc_t><<<blocks_for(u.numel(), kThreads), kThreads, 0, stream>>>(
          u.mutable_data_ptr<scalar_t>(), u.const_data_ptr<scalar_t>(), pr.width(l),
          h[l].narrow(0, p0, P).const_data_ptr<scalar_t>(), drop_rows<scalar_t>(d, l - 1, p0, P), P, pr.width(l),
          alpha);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      ubar.push_back(u);
    }
  }
  // Masks are no longer needed: h_l <- c h_l + ubar_l, the right operand of every dW.
  for (int l = 0; l <= L; ++l) {
    fold_operand_kernel<scalar_t, acc_t><<<blocks_for(h[l].numel(), kThreads), kThreads, 0, stream>>>(
        h[l].mutable_data_ptr<scalar_t>(), c, ubar.empty() ? nullptr : ubar[l].const_data_ptr<scalar_t>(), p0, p1, N,
        pr.width(l), l < L, l == L && a.pen.side == 2, acc_t(0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const dim3 col_grid_out(unsigned((pr.width(L) + 31) / 32), unsigned((N + kColRows - 1) / kColRows));
  colsum_kernel<scalar_t, acc_t><<<col_grid_out, kThreads, 0, stream>>>(h[L].const_data_ptr<scalar_t>(), nullptr, N,
                                                                        pr.width(L), dw_out.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  for (int l = 1; l <= L; ++l) {
    if (pr.b.empty()) continue;
    const dim3 col_grid(unsigned((pr.width(l) + 31) / 32), unsigned((N + kColRows - 1) / kColRows));
    colsum_kernel<scalar_t, acc_t><<<col_grid, kThreads, 0, stream>>>(v[l - 1].const_data_ptr<scalar_t>(), c, N,
                                                                      pr.width(l), db[l - 1].mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  PartialLayout stats_only{};
  stats_only.stride = kStats;
  cuda_mlp::launch_reduce_disc<scalar_t, acc_t>(pr, o, row, 1, stats_only, nullptr);  // stats, db_out
  for (int l = 1; l <= L; ++l) o.dW.push_back(at::mm(v[l - 1].t(), h[l - 1]));
  for (const auto& t : db) o.db.push_back(t.to(pr.x[1].scalar_type()));
  o.dw_out = dw_out.to(pr.x[1].scalar_type());
  return o.list();
}

template <typename scalar_t, typename acc_t>
std::vector<at::Tensor> gen_step(const Problem& pr, const contract::GenArgs& a, bool allow_tf32) {
  const int64_t N = pr.rows(), nr = pr.end[0], nf = pr.end[1] - pr.end[0];
  const auto acc_opts = pr.x[1].options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor acc = at::empty({kStats + N}, acc_opts);  // stats (written by the epilogue), then c
  acc_t* const stats = acc.mutable_data_ptr<acc_t>();
  at::Tensor logits = at::empty({N}, acc_opts);
  at::Tensor st = at::empty({2}, pr.x[1].options());
  const MatmulPrecisionScope precision(allow_tf32);
  const std::vector<at::Tensor> d = cuda_mlp::stacked_masks(pr);
  std::vector<at::Tensor> h = wide_forward<scalar_t, acc_t>(pr, stacked_rows(pr), d, logits);
  // Stack [real (paired only); fake]: the term is term_real on r - f (paired) or term_fake.
  const Term* tp = a.has_term ? &a.term : nullptr;
  cuda_mlp::launch_loss<scalar_t, acc_t>(logits.const_data_ptr<acc_t>(),
                                         cuda_mlp::loss_spec<scalar_t>(pr, a.paired ? tp : nullptr,
                                                                       a.paired ? nullptr : tp),
                                         a.paired, stats + kStats, stats);
  cuda_mlp::launch_reduce_gen<scalar_t, acc_t>(pr, st, stats, 1, nullptr);
  // Only the fake rows need the chain: grad = c * (V_1 W_1).
  std::vector<at::Tensor> hf;
  for (const auto& hl : h) hf.push_back(hl.narrow(0, nr, nf));
  std::vector<at::Tensor> v = wide_v_chain<scalar_t, acc_t>(pr, hf, d, nr);
  at::Tensor cf = acc.narrow(0, kStats + nr, nf).to(pr.x[1].scalar_type()).unsqueeze(1);
  return {st, at::mm(v[0], pr.W[0]).mul_(cf)};
}

}  // namespace

namespace cuda_mlp {

std::vector<at::Tensor> wide_disc_step(const Problem& pr, const contract::DiscArgs& a, bool allow_tf32) {
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pr.x[1].scalar_type(), "mlp_disc_step_cuda_wide", [&] {
    out = disc_step<scalar_t, typename AccType<scalar_t>::type>(pr, a, allow_tf32);
  });
  return out;
}

std::vector<at::Tensor> wide_gen_step(const Problem& pr, const contract::GenArgs& a, bool allow_tf32) {
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pr.x[1].scalar_type(), "mlp_gen_step_cuda_wide", [&] {
    out = gen_step<scalar_t, typename AccType<scalar_t>::type>(pr, a, allow_tf32);
  });
  return out;
}

}  // namespace cuda_mlp
}  // namespace fastgan
