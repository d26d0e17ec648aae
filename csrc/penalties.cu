// CUDA kernels for the gradient-penalty reduction over per-row input gradients (see
// penalties_cpu.cpp for the maths). One warp per row: the warp reduces |g_r|^2, then
// forward accumulates the row's penalty (one atomic per block) and backward rescales the row.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "loss_terms.h"

namespace fastgan {
namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t warp_row_sq_norm(const scalar_t* __restrict__ row, int64_t d, int lane) {
  acc_t s = 0;
  for (int64_t j = lane; j < d; j += 32) {
    const acc_t v = acc_t(row[j]);
    s += v * v;
  }
  s = warp_sum(s);
  return __shfl_sync(0xffffffffu, s, 0);
}

template <typename scalar_t, typename acc_t>
__global__ void penalty_forward_kernel(const scalar_t* __restrict__ g, int64_t rows, int64_t d, int kind, acc_t weight,
                                       acc_t center, acc_t* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  acc_t acc = 0;
  for (int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5); r < rows; r += int64_t(gridDim.x) * kRowsPerBlock) {
    const acc_t sq = warp_row_sq_norm<scalar_t, acc_t>(g + r * d, d, lane);
    if (lane == 0) acc += penalty_value<acc_t>(kind, sq, weight, center);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) atomicAdd(out, acc / acc_t(rows));
}

template <typename scalar_t, typename acc_t>
__global__ void penalty_backward_kernel(const scalar_t* __restrict__ go, const scalar_t* __restrict__ g, int64_t rows,
                                        int64_t d, int kind, acc_t weight, acc_t center, scalar_t* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const acc_t scale = acc_t(go[0]) / acc_t(rows);
  for (int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5); r < rows; r += int64_t(gridDim.x) * kRowsPerBlock) {
    const scalar_t* row = g + r * d;
    const acc_t k = scale * penalty_grad_factor<acc_t>(kind, warp_row_sq_norm<scalar_t, acc_t>(row, d, lane), weight, center);
    for (int64_t j = lane; j < d; j += 32) out[r * d + j] = scalar_t(k * acc_t(row[j]));
  }
}

void check_args(const at::Tensor& g, int64_t kind) {
  TORCH_CHECK(g.is_cuda(), "fastgan penalty (cuda): grad must be a CUDA tensor");
  TORCH_CHECK(g.dim() == 2, "fastgan penalty: grad must be (rows, features), got ", g.sizes());
  TORCH_CHECK(g.size(0) > 0 && g.size(1) > 0, "fastgan penalty: grad must not be empty, got ", g.sizes());
  TORCH_CHECK(g.is_floating_point(), "fastgan penalty: grad must be floating point, got ", g.scalar_type());
  TORCH_CHECK(kind == PENALTY_SQUARED || kind == PENALTY_CENTERED, "fastgan penalty: unknown kind ", kind);
}

at::Tensor penalty_forward_cuda(const at::Tensor& g_in, int64_t kind, double weight, double center) {
  check_args(g_in, kind);
  const c10::cuda::CUDAGuard guard(g_in.device());
  const at::Tensor g = g_in.contiguous();
  const int64_t rows = g.size(0), d = g.size(1);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "penalty_forward_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    at::Tensor acc = at::zeros({}, g.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    penalty_forward_kernel<scalar_t, acc_t><<<blocks_for(rows, kRowsPerBlock), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        g.const_data_ptr<scalar_t>(), rows, d, int(kind), acc_t(weight), acc_t(center), acc.mutable_data_ptr<acc_t>());
    out = acc.scalar_type() == g.scalar_type() ? acc : acc.to(g.scalar_type());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor penalty_backward_cuda(const at::Tensor& grad_out, const at::Tensor& g_in, int64_t kind, double weight,
                                 double center) {
  check_args(g_in, kind);
  TORCH_CHECK(grad_out.numel() == 1, "fastgan penalty: grad_out must be a scalar");
  const c10::cuda::CUDAGuard guard(g_in.device());
  const at::Tensor g = g_in.contiguous();
  const at::Tensor go = grad_out.to(g.scalar_type()).reshape({1}).contiguous();
  const int64_t rows = g.size(0), d = g.size(1);
  at::Tensor out = at::empty_like(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "penalty_backward_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    penalty_backward_kernel<scalar_t, acc_t><<<blocks_for(rows, kRowsPerBlock), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        go.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), rows, d, int(kind), acc_t(weight), acc_t(center),
        out.mutable_data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("penalty_forward", &penalty_forward_cuda);
  m.impl("penalty_backward", &penalty_backward_cuda);
}

}  // namespace fastgan
