// CUDA kernels for one GAN loss term (see loss_terms.h and losses_cpu.cpp for the maths).
// forward: a grid-stride pass that evaluates the term and reduces it (block sum + one atomic per
// block) or writes it elementwise; backward: one elementwise pass scaled by grad_out, which is
// read on the device (no host synchronisation).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "cuda_utils.cuh"
#include "loss_terms.h"

namespace fastgan {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void term_reduce_kernel(const scalar_t* __restrict__ x, int64_t n, Term t, acc_t norm,
                                   acc_t* __restrict__ out) {
  acc_t acc = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x)
    acc += term_value<acc_t>(t, acc_t(x[i]));
  acc = block_sum(acc);
  if (threadIdx.x == 0) atomicAdd(out, acc * norm);
}

template <typename scalar_t, typename acc_t>
__global__ void term_elementwise_kernel(const scalar_t* __restrict__ x, int64_t n, Term t, scalar_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x)
    out[i] = scalar_t(term_value<acc_t>(t, acc_t(x[i])));
}

// grad_i = go[go_stride * i] * norm * term'(x_i): go_stride 0 broadcasts a scalar grad_out.
template <typename scalar_t, typename acc_t>
__global__ void term_backward_kernel(const scalar_t* __restrict__ go, int64_t go_stride, const scalar_t* __restrict__ x,
                                     int64_t n, Term t, acc_t norm, scalar_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x)
    out[i] = scalar_t(acc_t(go[go_stride * i]) * norm * term_derivative<acc_t>(t, acc_t(x[i])));
}

void check_args(const at::Tensor& x, int64_t phi, int64_t reduction) {
  TORCH_CHECK(x.is_cuda(), "fastgan loss (cuda): logits must be a CUDA tensor");
  TORCH_CHECK(x.is_floating_point(), "fastgan loss: logits must be floating point, got ", x.scalar_type());
  TORCH_CHECK(x.numel() > 0, "fastgan loss: logits must not be empty");
  TORCH_CHECK(phi >= SOFTPLUS && phi <= HALF_SQUARE, "fastgan loss: unknown phi code ", phi);
  TORCH_CHECK(reduction >= REDUCE_NONE && reduction <= REDUCE_SUM, "fastgan loss: unknown reduction code ", reduction);
}

at::Tensor loss_term_forward_cuda(const at::Tensor& x_in, int64_t phi, double sign, double shift, double scale,
                                  int64_t reduction) {
  check_args(x_in, phi, reduction);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const Term t{int(phi), sign, shift, scale};
  const int64_t n = x.numel();
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int blocks = blocks_for(n, kThreads);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "loss_term_forward_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    if (reduction == REDUCE_NONE) {
      out = at::empty_like(x);
      term_elementwise_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), n, t, out.mutable_data_ptr<scalar_t>());
    } else {
      at::Tensor acc = at::zeros({}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      const acc_t norm = reduction == REDUCE_MEAN ? acc_t(1) / acc_t(n) : acc_t(1);
      term_reduce_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), n, t, norm, acc.mutable_data_ptr<acc_t>());
      out = acc.scalar_type() == x.scalar_type() ? acc : acc.to(x.scalar_type());
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor loss_term_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x_in, int64_t phi, double sign,
                                   double shift, double scale, int64_t reduction) {
  check_args(x_in, phi, reduction);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor go = grad_out.to(x.scalar_type()).contiguous();
  const int64_t n = x.numel();
  if (reduction == REDUCE_NONE) {
    TORCH_CHECK(go.sizes() == x.sizes(), "fastgan loss: grad_out must have the logits' shape for reduction 'none'");
  } else {
    TORCH_CHECK(go.numel() == 1, "fastgan loss: grad_out must be a scalar for reduction 'mean' or 'sum'");
  }
  const Term t{int(phi), sign, shift, scale};
  at::Tensor grad = at::empty_like(x);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "loss_term_backward_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const acc_t norm = reduction == REDUCE_MEAN ? acc_t(1) / acc_t(n) : acc_t(1);
    term_backward_kernel<scalar_t, acc_t><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
        go.const_data_ptr<scalar_t>(), reduction == REDUCE_NONE ? 1 : 0, x.const_data_ptr<scalar_t>(), n, t, norm,
        grad.mutable_data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("loss_term_forward", &loss_term_forward_cuda);
  m.impl("loss_term_backward", &loss_term_backward_cuda);
}

}  // namespace fastgan
