// CPU kernels for one GAN loss term (see loss_terms.h): forward = elementwise term and its
// reduction in one pass; backward = the elementwise derivative scaled by grad_out in one pass.
// Equivalent torch:  v = scale * phi(sign * x + shift);  v.mean() / v.sum() / v.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "loss_terms.h"

namespace fastgan {
namespace {

constexpr int64_t kGrain = 32768;

void check_term_args(const at::Tensor& x, int64_t phi, int64_t reduction) {
  TORCH_CHECK(x.is_floating_point(), "fastgan loss: logits must be floating point, got ", x.scalar_type());
  TORCH_CHECK(x.numel() > 0, "fastgan loss: logits must not be empty");
  TORCH_CHECK(phi >= SOFTPLUS && phi <= HALF_SQUARE, "fastgan loss: unknown phi code ", phi);
  TORCH_CHECK(reduction >= REDUCE_NONE && reduction <= REDUCE_SUM, "fastgan loss: unknown reduction code ", reduction);
}

at::Tensor loss_term_forward_cpu(const at::Tensor& x_in, int64_t phi, double sign, double shift, double scale,
                                 int64_t reduction) {
  check_term_args(x_in, phi, reduction);
  const at::Tensor x = x_in.contiguous();
  const Term t{static_cast<int>(phi), sign, shift, scale};
  const int64_t n = x.numel();
  if (reduction == REDUCE_NONE) {
    at::Tensor out = at::empty_like(x);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "loss_term_forward_cpu", [&] {
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) op[i] = static_cast<scalar_t>(term_value<double>(t, double(xp[i])));
      });
    });
    return out;
  }
  at::Tensor out = at::empty({}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "loss_term_forward_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    double total = at::parallel_reduce(
        0, n, kGrain, 0.0,
        [&](int64_t b, int64_t e, double acc) {
          for (int64_t i = b; i < e; ++i) acc += term_value<double>(t, double(xp[i]));
          return acc;
        },
        std::plus<double>());
    if (reduction == REDUCE_MEAN) total /= double(n);
    // a plain conversion: a total beyond the dtype's range is +-Inf there (as torch's sum), not an error
    out.mutable_data_ptr<scalar_t>()[0] = static_cast<scalar_t>(total);
  });
  return out;
}

at::Tensor loss_term_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x_in, int64_t phi, double sign,
                                  double shift, double scale, int64_t reduction) {
  check_term_args(x_in, phi, reduction);
  const at::Tensor x = x_in.contiguous();
  const Term t{static_cast<int>(phi), sign, shift, scale};
  const int64_t n = x.numel();
  at::Tensor grad = at::empty_like(x);
  if (reduction == REDUCE_NONE) {
    TORCH_CHECK(grad_out.sizes() == x.sizes(), "fastgan loss: grad_out must have the logits' shape for reduction 'none'");
    const at::Tensor go = grad_out.to(x.scalar_type()).contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "loss_term_backward_cpu", [&] {
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const scalar_t* gp = go.const_data_ptr<scalar_t>();
      scalar_t* op = grad.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i)
          op[i] = static_cast<scalar_t>(double(gp[i]) * term_derivative<double>(t, double(xp[i])));
      });
    });
    return grad;
  }
  TORCH_CHECK(grad_out.numel() == 1, "fastgan loss: grad_out must be a scalar for reduction 'mean' or 'sum'");
  double g = grad_out.item<double>();
  if (reduction == REDUCE_MEAN) g /= double(n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "loss_term_backward_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = grad.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) op[i] = static_cast<scalar_t>(g * term_derivative<double>(t, double(xp[i])));
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("loss_term_forward", &loss_term_forward_cpu);
  m.impl("loss_term_backward", &loss_term_backward_cpu);
}

}  // namespace fastgan
