// The CUDA fused MLP discriminator / generator step: the op's host code (docs/DESIGN.md section 4;
// schemas in fastgan/ops/mlp_step.py, the argument contract in mlp_step_contract.h).
//
// Two paths compute the same thing:
//  * fused (mlp_step_fused.cuh): weights, every activation of a tile of rows and the
//    weight-gradient sums in shared memory; used when the network fits and every width <= 128.
//    Unpaired losses: 2 launches (the fused pass, the ordered reduction of per-block sums).
//    Paired (relativistic) losses: 4 (a logits pass and the loss epilogue first).
//  * wide (mlp_step_wide.cu): products through cuBLAS, custom epilogue kernels.
// The op's option path="fused"|"wide" (default "auto") forces a path, for tests and benchmarks.
// tensor_cores=True runs the fused kernel's products on tensor cores (WMMA m16n16k8 TF32:
// 3xTF32 split precision for fp32 unless allow_tf32, plain TF32 for fp32 with allow_tf32 and for
// fp16/bf16 inputs; fp64 stays FFMA). Off by default until measured on a GPU.
// Dropout: the masks_* lists (checked by the contract) travel per row group, like the rows: the
// fused kernel reads them where it forms h_l and each activation-derivative factor; the wide
// path stacks them and applies them in its epilogue kernels.
//
// Per call: the contract checks, contiguous views, allocations from the caching allocator and
// the launches on the current stream; no host-device copy, no synchronisation (capturable in a
// CUDA graph). Device attributes and occupancy are looked up once per device and kernel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>

#include "mlp_step_fused.cuh"
#include "mlp_step_host.cuh"

namespace fastgan {
namespace cuda_mlp {
// mlp_step_wide.cu
std::vector<at::Tensor> wide_disc_step(const Problem& pr, const contract::DiscArgs& a, bool allow_tf32);
std::vector<at::Tensor> wide_gen_step(const Problem& pr, const contract::GenArgs& a, bool allow_tf32);
}  // namespace cuda_mlp

namespace {
using cuda_mlp::Problem;

using contract::Path;

// The fused kernel's MmaMode for this call (see the file comment).
int mma_mode(at::ScalarType dtype, bool allow_tf32, bool tensor_cores) {
  if (!tensor_cores || dtype == at::kDouble) return MMA_NONE;
  return dtype == at::kFloat && !allow_tf32 ? MMA_TF32X3 : MMA_TF32;
}

// Per-device facts, looked up once.
struct DeviceInfo {
  int sms = 0, smem_optin = 0;
};
DeviceInfo device_info(int dev) {
  constexpr int kMaxDevices = 64;
  static DeviceInfo info[kMaxDevices];
  static std::once_flag once[kMaxDevices];
  TORCH_CHECK(dev >= 0 && dev < kMaxDevices, "fastgan mlp step (cuda): device index ", dev, " out of range");
  std::call_once(once[dev], [dev] {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&info[dev].sms, cudaDevAttrMultiProcessorCount, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&info[dev].smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  });
  return info[dev];
}

// Rows per tile for the fused path, or 0 when it does not fit in shared memory.
int fused_tile(const Problem& pr, size_t acc_size, bool disc, bool mma, size_t* bytes) {
  const int L = pr.depth();
  if (L > kMaxDepth || pr.net.max_width() > 256) return 0;
  int w[kMaxDepth + 1];
  for (int l = 0; l <= L; ++l) w[l] = pr.width(l);
  const size_t budget = size_t(device_info(pr.x[1].get_device()).smem_optin) - 1024;  // block_sum's buffer
  for (int tile : {32, 16, 8, 4, 2, 1}) {  // small tiles only for fp64 (a test dtype); MMA: multiples of 16
    if (mma && tile % 16 != 0) continue;
    const int ld = fused_ld(int(pr.net.max_width()), mma);
    const size_t need = size_t(fused_layout(L, w, tile, ld, disc, mma).total) * acc_size;
    if (need <= budget) {
      *bytes = need;
      return tile;
    }
  }
  return 0;
}

// Blocks of the fused kernel: one per tile, at most what is resident at once (a persistent
// grid). Depends only on the device and the shapes, so the partial sums, and with them the
// results, are the same from run to run.
template <typename scalar_t, typename acc_t, int MODE, int MMA>
int fused_grid(int dev, size_t bytes, int64_t tiles) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> opted_in[kMaxDevices];  // dynamic smem allowed so far, per device
  static std::mutex mu;
  static int cached_dev = -1;
  static size_t cached_bytes = 0;
  static int cached_per_sm = 0;
  auto kernel = fused_mlp_kernel<scalar_t, acc_t, MODE, MMA>;
  if (opted_in[dev].load() < int(bytes)) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        device_info(dev).smem_optin - 1024));
    opted_in[dev].store(device_info(dev).smem_optin - 1024);
  }
  int per_sm = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (cached_dev != dev || cached_bytes != bytes) {
      C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&cached_per_sm, kernel, kThreads, bytes));
      cached_dev = dev;
      cached_bytes = bytes;
    }
    per_sm = cached_per_sm;
  }
  const int64_t cap = int64_t(device_info(dev).sms) * (per_sm > 0 ? per_sm : 1);
  return int(tiles < cap ? tiles : cap);
}

template <typename scalar_t, typename acc_t>
FusedParams<scalar_t, acc_t> fused_params(const Problem& pr, int tile, bool mma, const LossSpec<scalar_t>& spec) {
  FusedParams<scalar_t, acc_t> p{};
  const int L = pr.depth();
  for (int g = 0; g < 3; ++g) {
    p.x[g] = pr.x[g].defined() ? pr.x[g].const_data_ptr<scalar_t>() : nullptr;
    p.group_end[g] = pr.end[g];
  }
  p.depth = L;
  for (int l = 0; l <= L; ++l) p.width[l] = pr.width(l);
  for (int l = 0; l < L; ++l) {
    p.W[l] = pr.W[l].const_data_ptr<scalar_t>();
    p.b[l] = pr.b.empty() ? nullptr : pr.b[l].const_data_ptr<scalar_t>();
  }
  p.has_bias = !pr.b.empty();
  p.w_out = pr.w_out.const_data_ptr<scalar_t>();
  p.dropout = pr.dropout;
  for (int g = 0; g < 3; ++g)
    for (int l = 0; l < kMaxDepth; ++l)
      p.drop[g][l] = l < L && !pr.drop[g].empty() ? pr.drop[g][l].const_data_ptr<scalar_t>() : nullptr;
  p.alpha = acc_t(pr.net.alpha);
  p.tile = tile;
  p.ld = fused_ld(int(pr.net.max_width()), mma);
  p.loss = spec;
  return p;
}

template <typename scalar_t, typename acc_t, int MODE, int MMA>
void launch_fused(const FusedParams<scalar_t, acc_t>& p, int grid, size_t bytes) {
  if (grid == 0) return;
  fused_mlp_kernel<scalar_t, acc_t, MODE, MMA><<<grid, kThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Paired losses: the logits pass over every stacked row, then the loss epilogue (c and the
// stats into `stats`). Unpaired losses do both inside the backward pass.
template <typename scalar_t, typename acc_t, int MMA>
void fused_paired_loss(const Problem& pr, FusedParams<scalar_t, acc_t>& p, size_t bytes_logits, acc_t* logits,
                       acc_t* c, acc_t* stats) {
  const int64_t N = pr.rows();
  p.logits = logits;
  p.row_begin = 0;
  p.row_end = N;
  const int dev = pr.x[1].get_device();
  launch_fused<scalar_t, acc_t, MODE_LOGITS, MMA>(
      p, fused_grid<scalar_t, acc_t, MODE_LOGITS, MMA>(dev, bytes_logits, (N + p.tile - 1) / p.tile), bytes_logits);
  cuda_mlp::launch_loss<scalar_t, acc_t>(logits, p.loss, true, c, stats);
  p.c = c;
  p.inline_loss = false;
}

template <typename scalar_t, typename acc_t, int MMA>
std::vector<at::Tensor> fused_disc(const Problem& pr, const contract::DiscArgs& a, int tile, size_t bytes) {
  const int L = pr.depth();
  const int64_t N = pr.rows();
  const int dev = pr.x[1].get_device();
  int w[kMaxDepth + 1];
  for (int l = 0; l <= L; ++l) w[l] = pr.width(l);
  const PartialLayout q = partial_layout(L, w, !pr.b.empty(), true);
  const int grid = fused_grid<scalar_t, acc_t, MODE_DISC, MMA>(dev, bytes, (N + tile - 1) / tile);
  // One acc buffer: the partial rows, then (paired only) the epilogue's stats, c and logits.
  const int64_t extra = a.paired ? kStats + 2 * N : 0;
  at::Tensor acc = at::empty({int64_t(grid) * q.stride + extra},
                             pr.x[1].options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* const partials = acc.mutable_data_ptr<acc_t>();
  cuda_mlp::DiscOutputs o = cuda_mlp::disc_outputs(pr, pr.x[1].options(), true);

  FusedParams<scalar_t, acc_t> p = fused_params<scalar_t, acc_t>(
      pr, tile, MMA != MMA_NONE, cuda_mlp::loss_spec<scalar_t>(pr, a.has_real ? &a.term_real : nullptr,
                                              a.has_fake ? &a.term_fake : nullptr));
  p.inline_loss = true;
  acc_t* stats = nullptr;
  if (a.paired) {
    stats = partials + int64_t(grid) * q.stride;
    size_t bytes_logits = size_t(fused_layout(L, w, tile, p.ld, false, MMA != MMA_NONE).total) * sizeof(acc_t);
    fused_paired_loss<scalar_t, acc_t, MMA>(pr, p, bytes_logits, stats + kStats + N, stats + kStats, stats);
  }
  p.partials = partials;
  p.pen_begin = p.pen_end = 0;
  if (a.pen.active()) {
    p.pen_begin = a.pen.side == 0 ? 0 : pr.end[a.pen.side - 1];
    p.pen_end = pr.end[a.pen.side];
  }
  p.pen_kind = a.pen.kind;
  p.pen_weight = acc_t(a.pen.weight);
  p.pen_center = acc_t(a.pen.center);
  p.row_begin = 0;
  p.row_end = N;
  launch_fused<scalar_t, acc_t, MODE_DISC, MMA>(p, grid, bytes);
  cuda_mlp::launch_reduce_disc<scalar_t, acc_t>(pr, o, partials, grid, q, stats);
  return o.list();
}

template <typename scalar_t, typename acc_t, int MMA>
std::vector<at::Tensor> fused_gen(const Problem& pr, const contract::GenArgs& a, int tile, size_t bytes) {
  const int64_t N = pr.rows(), nr = pr.end[0], nf = N - nr;
  const int dev = pr.x[1].get_device();
  const int grid = fused_grid<scalar_t, acc_t, MODE_GEN, MMA>(dev, bytes, (nf + tile - 1) / tile);
  const int64_t extra = a.paired ? kStats + 2 * N : 0;
  at::Tensor acc = at::empty({int64_t(grid) * kStats + extra},
                             pr.x[1].options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* const partials = acc.mutable_data_ptr<acc_t>();
  at::Tensor st = at::empty({2}, pr.x[1].options());
  at::Tensor grad = at::empty_like(pr.x[1]);
  // Stack [real (paired only); fake]: the term is term_real on r - f (paired) or term_fake.
  const Term* tp = a.has_term ? &a.term : nullptr;
  FusedParams<scalar_t, acc_t> p = fused_params<scalar_t, acc_t>(
      pr, tile, MMA != MMA_NONE, cuda_mlp::loss_spec<scalar_t>(pr, a.paired ? tp : nullptr, a.paired ? nullptr : tp));
  p.inline_loss = true;
  acc_t* stats = nullptr;
  if (a.paired) {
    stats = partials + int64_t(grid) * kStats;
    fused_paired_loss<scalar_t, acc_t, MMA>(pr, p, bytes, stats + kStats + N, stats + kStats, stats);
  }
  p.partials = partials;
  p.grad = grad.mutable_data_ptr<scalar_t>();
  p.row_begin = nr;
  p.row_end = N;
  launch_fused<scalar_t, acc_t, MODE_GEN, MMA>(p, grid, bytes);
  cuda_mlp::launch_reduce_gen<scalar_t, acc_t>(pr, st, partials, grid, stats);
  return {st, grad};
}

// f(std::integral_constant<int, MMA>{}) for the call's MmaMode; tensor-core kernels exist for
// fp32 accumulation only (fp64 always takes MMA_NONE).
template <typename scalar_t, typename F>
std::vector<at::Tensor> with_mma(int mma, F f) {
  if constexpr (std::is_same<typename AccType<scalar_t>::type, float>::value) {
    if (mma == MMA_TF32X3) return f(std::integral_constant<int, MMA_TF32X3>{});
    if (mma == MMA_TF32) return f(std::integral_constant<int, MMA_TF32>{});
  }
  return f(std::integral_constant<int, MMA_NONE>{});
}

// The path for this call: fused when it fits and every width <= 128 (or when forced).
bool use_fused(const Problem& pr, Path forced, bool disc, size_t acc_size, bool mma, int* tile, size_t* bytes) {
  *tile = forced == Path::WIDE ? 0 : fused_tile(pr, acc_size, disc, mma, bytes);
  TORCH_CHECK(forced != Path::FUSED || *tile > 0, "fastgan: path='fused': this network does not fit the fused "
              "kernel's shared memory (at most ", kMaxDepth, " layers, widths <= 256, fewer for fp64)");
  return *tile > 0 && (forced == Path::FUSED || pr.net.max_width() <= 128);
}

std::vector<at::Tensor> mlp_disc_step_cuda(const at::Tensor& real, const at::Tensor& fake,
                                           const std::optional<at::Tensor>& penalty_input, at::TensorList weights,
                                           at::TensorList biases, const at::Tensor& w_out,
                                           const std::optional<at::Tensor>& b_out, double negative_slope,
                                           c10::ArrayRef<double> term_real, c10::ArrayRef<double> term_fake,
                                           bool paired, int64_t penalty_side, int64_t penalty_kind,
                                           double penalty_weight, double penalty_center, bool allow_tf32,
                                           at::TensorList masks_real, at::TensorList masks_fake,
                                           at::TensorList masks_penalty, c10::string_view path, bool tensor_cores) {
  const Path forced = contract::parse_path(path, at::kCUDA);
  const contract::DiscArgs a =
      contract::parse_disc(real, fake, penalty_input, weights, biases, w_out, b_out, negative_slope, term_real,
                           term_fake, paired, penalty_side, penalty_kind, penalty_weight, penalty_center, at::kCUDA);
  const bool dropout = contract::parse_disc_masks(masks_real, masks_fake, masks_penalty, real, fake, penalty_input,
                                                  a.net, at::kCUDA);
  const c10::cuda::CUDAGuard guard(real.device());
  Problem pr = cuda_mlp::make_problem(a.net, real, fake, penalty_input ? *penalty_input : at::Tensor(), weights,
                                      biases, w_out, b_out);
  if (dropout) cuda_mlp::add_masks(pr, masks_real, masks_fake, masks_penalty);
  const at::ScalarType dtype = real.scalar_type();
  int tile = 0;
  size_t bytes = 0;
  const int mma = mma_mode(dtype, allow_tf32, tensor_cores);
  if (!use_fused(pr, forced, true, dtype == at::kDouble ? sizeof(double) : sizeof(float), mma != MMA_NONE, &tile, &bytes))
    return cuda_mlp::wide_disc_step(pr, a, allow_tf32);
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mlp_disc_step_cuda", [&] {
    out = with_mma<scalar_t>(mma, [&](auto mode) {
      return fused_disc<scalar_t, typename AccType<scalar_t>::type, decltype(mode)::value>(pr, a, tile, bytes);
    });
  });
  return out;
}

std::vector<at::Tensor> mlp_gen_step_cuda(const at::Tensor& fake, const std::optional<at::Tensor>& real,
                                          at::TensorList weights, at::TensorList biases, const at::Tensor& w_out,
                                          const std::optional<at::Tensor>& b_out, double negative_slope,
                                          c10::ArrayRef<double> term, bool paired, bool allow_tf32,
                                          at::TensorList masks_fake, at::TensorList masks_real,
                                          c10::string_view path, bool tensor_cores) {
  const Path forced = contract::parse_path(path, at::kCUDA);
  const contract::GenArgs a =
      contract::parse_gen(fake, real, weights, biases, w_out, b_out, negative_slope, term, paired, at::kCUDA);
  const bool dropout = contract::parse_gen_masks(masks_fake, masks_real, fake, real, paired, a.net, at::kCUDA);
  const c10::cuda::CUDAGuard guard(fake.device());
  Problem pr = cuda_mlp::make_problem(a.net, paired ? *real : at::Tensor(), fake, at::Tensor(), weights, biases,
                                      w_out, b_out);
  if (dropout) cuda_mlp::add_masks(pr, masks_real, masks_fake, {});  // stacked [real (paired); fake]
  const at::ScalarType dtype = fake.scalar_type();
  int tile = 0;
  size_t bytes = 0;
  const int mma = mma_mode(dtype, allow_tf32, tensor_cores);
  if (!use_fused(pr, forced, false, dtype == at::kDouble ? sizeof(double) : sizeof(float), mma != MMA_NONE, &tile, &bytes))
    return cuda_mlp::wide_gen_step(pr, a, allow_tf32);
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mlp_gen_step_cuda", [&] {
    out = with_mma<scalar_t>(mma, [&](auto mode) {
      return fused_gen<scalar_t, typename AccType<scalar_t>::type, decltype(mode)::value>(pr, a, tile, bytes);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("mlp_disc_step", &mlp_disc_step_cuda);
  m.impl("mlp_gen_step", &mlp_gen_step_cuda);
}

}  // namespace fastgan
