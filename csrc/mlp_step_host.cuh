// Host code shared by the two CUDA paths of the fused MLP step (mlp_step.cu: the op and the
// fused path; mlp_step_wide.cu: the cuBLAS path). Per call: no host-device copy, no
// synchronisation, every launch on the current stream, every buffer from the caching allocator,
// so a call can be captured in a CUDA graph.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/accumulate.h>

#include <vector>

#include "mlp_step_contract.h"
#include "mlp_step_epilogue.cuh"

namespace fastgan {
namespace cuda_mlp {

// Everything both passes and both paths share: the stacked rows and the network.
struct Problem {
  at::Tensor x[3];               // contiguous row groups (undefined when absent): real, fake, penalty_input
  int64_t end[3] = {0, 0, 0};    // stacked row boundaries
  std::vector<at::Tensor> W, b;  // contiguous; b empty without biases
  at::Tensor w_out;              // contiguous (1, H_L)
  std::optional<at::Tensor> b_out;
  std::vector<at::Tensor> drop[3];  // dropout: per row group, one (rows_g, H_l) multiplier per layer
  bool dropout = false;             // (each group with rows has its masks; none without dropout)
  contract::Network net;
  int64_t rows() const { return end[2]; }
  int depth() const { return net.depth(); }
  int width(int l) const { return int(net.width[l]); }
};

inline Problem make_problem(const contract::Network& net, const at::Tensor& real_or_empty, const at::Tensor& fake,
                            const at::Tensor& third, at::TensorList weights, at::TensorList biases,
                            const at::Tensor& w_out, const std::optional<at::Tensor>& b_out) {
  Problem pr;
  pr.net = net;
  int64_t end = 0;
  const at::Tensor* groups[3] = {&real_or_empty, &fake, &third};
  for (int g = 0; g < 3; ++g) {
    if (groups[g]->defined()) pr.x[g] = groups[g]->contiguous();
    end += pr.x[g].defined() ? pr.x[g].size(0) : 0;
    pr.end[g] = end;
  }
  for (const auto& w : weights) pr.W.push_back(w.contiguous());
  for (const auto& b : biases) pr.b.push_back(b.contiguous());
  pr.w_out = w_out.contiguous();
  if (b_out) pr.b_out = b_out->contiguous();
  return pr;
}

// The row groups' dropout masks (checked by contract::parse_*_masks: contiguous, (rows_g, H_l)),
// in the order of pr.x; all empty: no dropout.
inline void add_masks(Problem& pr, at::TensorList g0, at::TensorList g1, at::TensorList g2) {
  const at::TensorList groups[3] = {g0, g1, g2};
  for (int g = 0; g < 3; ++g) {
    pr.drop[g] = groups[g].vec();
    pr.dropout = pr.dropout || !groups[g].empty();
  }
}

// Per layer, the dropout masks of every stacked row (N, H_l), like stacked x; empty without dropout.
inline std::vector<at::Tensor> stacked_masks(const Problem& pr) {
  std::vector<at::Tensor> out;
  for (int l = 0; l < pr.depth() && pr.dropout; ++l) {
    std::vector<at::Tensor> parts;
    for (int g = 0; g < 3; ++g)
      if (!pr.drop[g].empty()) parts.push_back(pr.drop[g][l]);
    out.push_back(parts.size() == 1 ? parts[0] : at::cat(parts, 0));
  }
  return out;
}

template <typename scalar_t>
LossSpec<scalar_t> loss_spec(const Problem& pr, const Term* tr, const Term* tf) {
  LossSpec<scalar_t> s{};
  s.b_out = pr.b_out ? pr.b_out->const_data_ptr<scalar_t>() : nullptr;
  s.nr = pr.end[0];
  s.nf = pr.end[1] - pr.end[0];
  s.has_real = tr != nullptr;
  s.has_fake = tf != nullptr;
  if (tr) s.term_real = *tr;
  if (tf) s.term_fake = *tf;
  return s;
}

// One launch: c (N,) and stats (kStats,) from the logits (see loss_epilogue_kernel).
template <typename scalar_t, typename acc_t>
void launch_loss(const acc_t* logits, const LossSpec<scalar_t>& spec, bool paired, acc_t* c, acc_t* stats) {
  LossParams<scalar_t, acc_t> p{};
  p.logits = logits;
  p.spec = spec;
  p.paired = paired;
  p.c = c;
  p.stats = stats;
  loss_epilogue_kernel<scalar_t, acc_t><<<1, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The discriminator step's outputs in the input dtype, carved from one buffer in the op's order:
// [stats (4,), dW_1..dW_L, db_1..db_L, dw_out (1, H_L), db_out (1,)]; with_params false: only
// stats and db_out (the wide path makes the others).
struct DiscOutputs {
  at::Tensor stats, dw_out, db_out;
  std::vector<at::Tensor> dW, db;
  std::vector<at::Tensor> list() const {
    std::vector<at::Tensor> out{stats};
    out.insert(out.end(), dW.begin(), dW.end());
    out.insert(out.end(), db.begin(), db.end());
    out.push_back(dw_out);
    if (db_out.defined()) out.push_back(db_out);
    return out;
  }
};

inline DiscOutputs disc_outputs(const Problem& pr, const at::TensorOptions& opts, bool with_params) {
  const int L = pr.depth();
  int64_t n = 4 + (with_params ? pr.width(L) : 0) + (pr.b_out ? 1 : 0);
  for (int l = 0; l < L && with_params; ++l) n += pr.width(l + 1) * pr.width(l) + (pr.b.empty() ? 0 : pr.width(l + 1));
  const at::Tensor buf = at::empty({n}, opts);
  int64_t off = 0;
  const auto carve = [&](at::IntArrayRef shape) {
    const int64_t k = c10::multiply_integers(shape);
    at::Tensor t = buf.narrow(0, off, k).view(shape);
    off += k;
    return t;
  };
  DiscOutputs o;
  o.stats = carve({4});
  if (with_params) {
    for (int l = 0; l < L; ++l) o.dW.push_back(carve({pr.width(l + 1), pr.width(l)}));
    if (!pr.b.empty())
      for (int l = 0; l < L; ++l) o.db.push_back(carve({pr.width(l + 1)}));
    o.dw_out = carve({1, pr.width(L)});
  }
  if (pr.b_out) o.db_out = carve({1});
  return o;
}

// One launch: the outputs from `blocks` partial rows of q.stride entries laid out by q (see
// reduce_partials_kernel); outputs o does not hold are skipped. extra: (kStats,) stats from the
// loss epilogue, or nullptr.
template <typename scalar_t, typename acc_t>
void launch_reduce_disc(const Problem& pr, const DiscOutputs& o, const acc_t* partials, int blocks,
                        const PartialLayout& q, const acc_t* extra) {
  ReduceParams<scalar_t, acc_t> p{};
  p.partials = partials;
  p.blocks = blocks;
  p.stride = q.stride;
  p.extra = extra;
  const auto add = [&](int begin, const at::Tensor& t) {
    p.seg_begin[p.segments] = begin;
    p.seg_out[p.segments++] = t.mutable_data_ptr<scalar_t>();
  };
  for (int l = 0; l < int(o.dW.size()); ++l) add(q.dw[l], o.dW[l]);
  for (int l = 0; l < int(o.db.size()); ++l) add(q.db[l], o.db[l]);
  if (o.dw_out.defined()) add(q.dw_out, o.dw_out);
  p.seg_begin[p.segments] = q.stride;
  p.stats_out = o.stats.mutable_data_ptr<scalar_t>();
  p.gen = false;
  p.b_out_grad = o.db_out.defined() ? o.db_out.mutable_data_ptr<scalar_t>() : nullptr;
  p.inv_nr = acc_t(1) / acc_t(pr.end[0]);
  p.inv_nf = acc_t(1) / acc_t(pr.end[1] - pr.end[0]);
  reduce_partials_kernel<scalar_t, acc_t>
      <<<blocks_for(q.stride, kThreads, 1024), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Generator: stats (loss, mean fake logit) from `blocks` rows of kStats partial stats.
template <typename scalar_t, typename acc_t>
void launch_reduce_gen(const Problem& pr, const at::Tensor& stats, const acc_t* partials, int blocks,
                       const acc_t* extra) {
  ReduceParams<scalar_t, acc_t> p{};
  p.partials = partials;
  p.blocks = blocks;
  p.stride = kStats;
  p.extra = extra;
  p.seg_begin[0] = kStats;
  p.stats_out = stats.mutable_data_ptr<scalar_t>();
  p.gen = true;
  p.inv_nf = acc_t(1) / acc_t(pr.end[1] - pr.end[0]);
  reduce_partials_kernel<scalar_t, acc_t><<<1, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda_mlp
}  // namespace fastgan
