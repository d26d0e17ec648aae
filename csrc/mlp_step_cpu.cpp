// The CPU fused MLP discriminator and generator steps: the ops (docs/DESIGN.md section 4; the
// schemas are in fastgan/ops/mlp_step.py, the argument contract in mlp_step_contract.h). Equivalent
// torch, autograd being the specification:
//
//   o = D(x): z_l = h_{l-1} W_l^T + b_l, h_l = leaky_relu(z_l, alpha), o = h_L w_out^T + b_out
//   disc: total = sum_i term_real(r_i) + sum_j term_fake(f_j) + sum_p pw * pen(|dD(x_p)/dx_p|)
//         outputs [loss, penalty, mean r, mean f] and d total / d (W, b, w_out, b_out)
//   gen:  loss = sum_j term(f_j) (or term(r_j - f_j) when paired); outputs [loss, mean f], dloss/dfake
//
// Here: the arguments checked, half and bfloat16 computed in float32, the outputs allocated, and the
// kernels called. The kernels, one job per file:
//   mlp_step_cpu_blas.h    products (BLAS or at::mm; fixed tiles in parallel) and the SIMD dispatch
//   mlp_step_cpu_block.h   the work plan, and the passes every block makes (forward, V chain)
//   mlp_step_cpu_narrow.h  the narrow path: per-chunk partial sums of the gradients
//   mlp_step_cpu_wide.h    the wide path: gradients added straight into the outputs by tiled products
//   mlp_step_cpu_disc.h    the discriminator step: its blocks and the driver that sums them in order
//   mlp_step_cpu_gen.h     the generator step's blocks
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "loss_terms.h"
#include "mlp_step_contract.h"
#include "mlp_step_cpu_disc.h"
#include "mlp_step_cpu_gen.h"

namespace fastgan {
namespace {

std::vector<at::Tensor> mlp_disc_step_cpu(const at::Tensor& real_in, const at::Tensor& fake_in,
                                          const c10::optional<at::Tensor>& penalty_input, at::TensorList weights,
                                          at::TensorList biases, const at::Tensor& w_out,
                                          const c10::optional<at::Tensor>& b_out, double negative_slope,
                                          c10::ArrayRef<double> term_real, c10::ArrayRef<double> term_fake,
                                          bool paired, int64_t penalty_side, int64_t penalty_kind,
                                          double penalty_weight, double penalty_center, bool allow_tf32,
                                          at::TensorList masks_real, at::TensorList masks_fake,
                                          at::TensorList masks_penalty, c10::string_view path, bool tensor_cores) {
  (void)allow_tf32, (void)tensor_cores;  // CPU products are always full precision
  contract::check_single_path(path, at::kCPU);
  const contract::DiscArgs args = contract::parse_disc(real_in, fake_in, penalty_input, weights, biases, w_out, b_out,
                                                       negative_slope, term_real, term_fake, paired, penalty_side,
                                                       penalty_kind, penalty_weight, penalty_center, at::kCPU);
  const bool dropout = contract::parse_disc_masks(masks_real, masks_fake, masks_penalty, real_in, fake_in,
                                                  penalty_input, args.net, at::kCPU);
  const Term tr = args.term_real, tf = args.term_fake;
  const bool has_tr = args.has_real, has_tf = args.has_fake;
  const PenaltySpec pen = args.pen;

  const at::ScalarType dtype = real_in.scalar_type();
  const bool upcast = dtype == at::kHalf || dtype == at::kBFloat16;
  auto prep = [&](const at::Tensor& t) { return (upcast ? t.to(at::kFloat) : t).contiguous(); };
  auto prep_list = [&](at::TensorList ts) {
    std::vector<at::Tensor> v;
    for (const auto& t : ts) v.push_back(prep(t));
    return v;
  };
  const at::Tensor real = prep(real_in), fake = prep(fake_in);
  const at::Tensor pin = penalty_side == 2 ? prep(*penalty_input) : at::Tensor();
  const std::vector<at::Tensor> ws_ = prep_list(weights), bs_ = prep_list(biases);
  const at::Tensor wo_ = prep(w_out);
  const c10::optional<at::Tensor> bo_ = b_out.has_value() ? c10::optional<at::Tensor>(prep(*b_out)) : c10::nullopt;
  std::vector<at::Tensor> mks[3];
  if (dropout) {
    mks[0] = prep_list(masks_real);
    mks[1] = prep_list(masks_fake);
    mks[2] = prep_list(masks_penalty);
  }

  std::vector<at::Tensor> outs;
  for (const auto& w : ws_) outs.push_back(at::empty_like(w));
  for (const auto& b : bs_) outs.push_back(at::empty_like(b));
  outs.push_back(at::empty_like(wo_));
  if (bo_.has_value()) outs.push_back(at::empty_like(*bo_));
  double stats[4];

  AT_DISPATCH_FLOATING_TYPES(real.scalar_type(), "mlp_disc_step_cpu", [&] {
    std::vector<at::Tensor> keep;
    const Net<scalar_t> net = make_net<scalar_t>(keep, ws_, bs_, wo_, bo_, negative_slope);
    DiscJob<scalar_t> job{&net,
                          {real.const_data_ptr<scalar_t>(), fake.const_data_ptr<scalar_t>(),
                           pin.defined() ? pin.const_data_ptr<scalar_t>() : nullptr},
                          {real.size(0), fake.size(0), pin.defined() ? pin.size(0) : 0},
                          has_tr ? &tr : nullptr, has_tf ? &tf : nullptr, paired, !bs_.empty(), pen,
                          block_rows(net, penalty_side == 2 ? 3 : 2,
                                     std::max({real.size(0), fake.size(0), pin.defined() ? pin.size(0) : 0})),
                          grad_layout(net, !bs_.empty())};
    std::vector<const scalar_t*> mptr[3];
    for (int s = 0; s < 3 && dropout; ++s) {
      if (mks[s].empty()) continue;
      mptr[s].push_back(nullptr);
      for (const auto& m : mks[s]) mptr[s].push_back(m.const_data_ptr<scalar_t>());
      job.mk[s] = mptr[s].data();
    }
    std::vector<scalar_t*> grads;
    for (auto& t : outs) grads.push_back(t.mutable_data_ptr<scalar_t>());
    disc_kernel<scalar_t>(job, stats, grads);
  });

  at::Tensor st = at::empty({4}, real_in.options().dtype(at::kDouble));
  double* sp = st.mutable_data_ptr<double>();
  sp[0] = stats[0];
  sp[1] = stats[1];
  sp[2] = stats[2] / double(real.size(0));
  sp[3] = stats[3] / double(fake.size(0));
  std::vector<at::Tensor> result{st.to(dtype)};
  for (auto& t : outs) result.push_back(upcast ? t.to(dtype) : t);
  return result;
}

std::vector<at::Tensor> mlp_gen_step_cpu(const at::Tensor& fake_in, const c10::optional<at::Tensor>& real_in,
                                         at::TensorList weights, at::TensorList biases, const at::Tensor& w_out,
                                         const c10::optional<at::Tensor>& b_out, double negative_slope,
                                         c10::ArrayRef<double> term, bool paired, bool allow_tf32,
                                         at::TensorList masks_fake, at::TensorList masks_real,
                                         c10::string_view path, bool tensor_cores) {
  (void)allow_tf32, (void)tensor_cores;
  contract::check_single_path(path, at::kCPU);
  const contract::GenArgs args =
      contract::parse_gen(fake_in, real_in, weights, biases, w_out, b_out, negative_slope, term, paired, at::kCPU);
  const bool dropout = contract::parse_gen_masks(masks_fake, masks_real, fake_in, real_in, paired, args.net, at::kCPU);
  const Term t = args.term;
  const bool has_t = args.has_term;
  const at::ScalarType dtype = fake_in.scalar_type();
  const bool upcast = dtype == at::kHalf || dtype == at::kBFloat16;
  auto prep = [&](const at::Tensor& x) { return (upcast ? x.to(at::kFloat) : x).contiguous(); };
  const at::Tensor fake = prep(fake_in);
  const at::Tensor real = paired ? prep(*real_in) : at::Tensor();
  std::vector<at::Tensor> ws_, bs_;
  for (const auto& w : weights) ws_.push_back(prep(w));
  for (const auto& b : biases) bs_.push_back(prep(b));
  const at::Tensor wo_ = prep(w_out);
  const c10::optional<at::Tensor> bo_ = b_out.has_value() ? c10::optional<at::Tensor>(prep(*b_out)) : c10::nullopt;
  at::Tensor dfake = at::empty_like(fake);
  double loss = 0, sum_f = 0;
  std::vector<at::Tensor> mks[2];  // fake, real
  if (dropout) {
    for (const auto& m : masks_fake) mks[0].push_back(prep(m));
    for (const auto& m : masks_real) mks[1].push_back(prep(m));
  }

  AT_DISPATCH_FLOATING_TYPES(fake.scalar_type(), "mlp_gen_step_cpu", [&] {
    using T = scalar_t;
    std::vector<at::Tensor> keep;
    const Net<T> net = make_net<T>(keep, ws_, bs_, wo_, bo_, negative_slope);
    const int64_t Nf = fake.size(0);
    const int sides = paired ? 2 : 1;
    const int64_t Rb = block_rows(net, sides, Nf);
    const int64_t nblocks = (Nf + Rb - 1) / Rb;
    std::vector<double> block_stats(size_t(nblocks * 2), 0.0);
    GenJob<T> job{&net, fake.const_data_ptr<T>(), paired ? real.const_data_ptr<T>() : nullptr, Nf,
                  has_t ? &t : nullptr, paired, Rb, dfake.mutable_data_ptr<T>()};
    std::vector<const T*> mptr[2];
    for (int s = 0; s < 2 && dropout; ++s) {
      if (mks[s].empty()) continue;
      mptr[s].push_back(nullptr);
      for (const auto& m : mks[s]) mptr[s].push_back(m.const_data_ptr<T>());
    }
    if (dropout) {
      job.mk_fake = mptr[0].data();
      job.mk_real = paired ? mptr[1].data() : nullptr;
    }
    const bool simd = cpu_has_simd_target();
    auto run_blocks = [&](int64_t bb, int64_t be) {
      Workspace<T> ws(net, sides * Rb, 0, dropout);
      for (int64_t bi = bb; bi < be; ++bi) {
        if (simd) gen_block_simd(job, ws, bi, &block_stats[bi * 2]);
        else gen_block_base(job, ws, bi, &block_stats[bi * 2]);
      }
    };
    if (net.wide) run_blocks(0, nblocks);  // blocks in turn, products parallel inside
    else at::parallel_for(0, nblocks, 1, run_blocks);
    for (int64_t bi = 0; bi < nblocks; ++bi) { loss += block_stats[bi * 2]; sum_f += block_stats[bi * 2 + 1]; }
  });

  at::Tensor st = at::empty({2}, fake_in.options().dtype(at::kDouble));
  st.mutable_data_ptr<double>()[0] = loss;
  st.mutable_data_ptr<double>()[1] = sum_f / double(fake.size(0));
  return {st.to(dtype), upcast ? dfake.to(dtype) : dfake};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("mlp_disc_step", &mlp_disc_step_cpu);
  m.impl("mlp_gen_step", &mlp_gen_step_cpu);
}

}  // namespace fastgan
