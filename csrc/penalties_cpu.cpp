// CPU kernels for the gradient-penalty reduction over per-row input gradients g (rows, features):
//   forward   P = weight / rows * sum_r f(|g_r|)      f = n^2/2 (kind 0) or (n - center)^2 (kind 1)
//   backward  dP/dg_r = grad_out * k(|g_r|) / rows * g_r   (see penalty_grad_factor; 0 at n = 0)
// Equivalent torch:  n = g.norm(dim=1);  weight * (n**2 / 2).mean()  or  weight * ((n - c)**2).mean()
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "loss_terms.h"

namespace fastgan {
namespace {

void check_penalty_args(const at::Tensor& g, int64_t kind) {
  TORCH_CHECK(g.dim() == 2, "fastgan penalty: grad must be (rows, features), got ", g.sizes());
  TORCH_CHECK(g.size(0) > 0 && g.size(1) > 0, "fastgan penalty: grad must not be empty, got ", g.sizes());
  TORCH_CHECK(g.is_floating_point(), "fastgan penalty: grad must be floating point, got ", g.scalar_type());
  TORCH_CHECK(kind == PENALTY_SQUARED || kind == PENALTY_CENTERED, "fastgan penalty: unknown kind ", kind);
}

template <typename scalar_t>
double row_sq_norm(const scalar_t* row, int64_t d) {
  double s = 0.0;
  for (int64_t j = 0; j < d; ++j) s += double(row[j]) * double(row[j]);
  return sq_norm_as_torch<scalar_t>(s);
}

at::Tensor penalty_forward_cpu(const at::Tensor& g_in, int64_t kind, double weight, double center) {
  check_penalty_args(g_in, kind);
  const at::Tensor g = g_in.contiguous();
  const int64_t rows = g.size(0), d = g.size(1);
  at::Tensor out = at::empty({}, g.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "penalty_forward_cpu", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const double total = at::parallel_reduce(
        0, rows, std::max<int64_t>(1, 16384 / d), 0.0,
        [&](int64_t b, int64_t e, double acc) {
          for (int64_t r = b; r < e; ++r) acc += penalty_value<double>(int(kind), row_sq_norm(gp + r * d, d), weight, center);
          return acc;
        },
        std::plus<double>());
    // a plain conversion: beyond the dtype's range is +-Inf (as in torch), not an error
    out.mutable_data_ptr<scalar_t>()[0] = static_cast<scalar_t>(total / double(rows));
  });
  return out;
}

at::Tensor penalty_backward_cpu(const at::Tensor& grad_out, const at::Tensor& g_in, int64_t kind, double weight,
                                double center) {
  check_penalty_args(g_in, kind);
  TORCH_CHECK(grad_out.numel() == 1, "fastgan penalty: grad_out must be a scalar");
  const at::Tensor g = g_in.contiguous();
  const int64_t rows = g.size(0), d = g.size(1);
  const double scale = grad_out.item<double>() / double(rows);
  at::Tensor out = at::empty_like(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "penalty_backward_cpu", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / d), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const scalar_t* row = gp + r * d;
        const double k = scale * penalty_grad_factor<double>(int(kind), row_sq_norm(row, d), weight, center);
        for (int64_t j = 0; j < d; ++j) op[r * d + j] = static_cast<scalar_t>(k * double(row[j]));
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("penalty_forward", &penalty_forward_cpu);
  m.impl("penalty_backward", &penalty_backward_cpu);
}

}  // namespace fastgan
