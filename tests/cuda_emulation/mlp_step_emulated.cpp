// Runs the fused-path kernels of csrc/mlp_step.cu on the CPU: every CUDA thread of a block is a
// std::thread, __syncthreads is a block barrier, warp shuffles go through a per-warp buffer
// with a warp barrier, atomicAdd takes a mutex, and blocks run one after another. This checks
// the kernels' indexing, tiling, barriers and reductions where no GPU is available; it says
// nothing about speed. Driven by tests/test_mlp_step_cuda_emulated.py.
//
// Usage: mlp_step_emulated IN OUT. IN holds float64 values: a header (see read_problem), then
// real, fake, penalty_input rows, W_1..W_L, b_1..b_L, w_out, b_out. OUT receives float64:
// disc: stats (loss, penalty, mean real, mean fake, db_out), dW_1..dW_L, db_1..db_L, dw_out;
// gen: stats, d loss / d fake.
// First every CUDA / c10 header that cuda_utils.cuh pulls in: they use the names redefined below.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <barrier>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace emu {
struct Dim {
  unsigned x = 0, y = 0, z = 0;
};
constexpr int kBlock = 256;
thread_local Dim thread_idx;
Dim block_idx, block_dim{kBlock, 1, 1}, grid_dim{1, 1, 1};
std::unique_ptr<std::barrier<>> block_barrier;
std::unique_ptr<std::barrier<>> warp_barrier[kBlock / 32];
double warp_buffer[kBlock / 32][32];
std::mutex atomic_mutex;
std::vector<double> dynamic_smem;
}  // namespace emu

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define threadIdx emu::thread_idx
#define blockIdx emu::block_idx
#define blockDim emu::block_dim
#define gridDim emu::grid_dim
#define FASTGAN_DYNAMIC_SMEM(name) unsigned char* name = reinterpret_cast<unsigned char*>(emu::dynamic_smem.data())

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

template <typename T>
T emu_shuffle(T v, int src_lane) {
  const int lane = emu::thread_idx.x & 31, warp = emu::thread_idx.x >> 5;
  emu::warp_buffer[warp][lane] = double(v);
  emu::warp_barrier[warp]->arrive_and_wait();
  const T r = src_lane >= 0 && src_lane < 32 ? T(emu::warp_buffer[warp][src_lane]) : v;
  emu::warp_barrier[warp]->arrive_and_wait();
  return r;
}
template <typename T>
T __shfl_down_sync(unsigned, T v, int offset) {
  const int lane = emu::thread_idx.x & 31;
  return lane + offset < 32 ? emu_shuffle(v, lane + offset) : emu_shuffle(v, -1);
}
template <typename T>
T __shfl_sync(unsigned, T v, int src) {
  return emu_shuffle(v, src);
}
template <typename T>
T atomicAdd(T* p, T v) {
  std::lock_guard<std::mutex> lock(emu::atomic_mutex);
  const T old = *p;
  *p = old + v;
  return old;
}

#define FASTGAN_CUDA_EMULATION
#include "mlp_step.cu"

namespace {
using namespace fastgan;

// Runs body() as grid blocks of 256 threads with `smem` bytes of dynamic shared memory.
void launch(int grid, size_t smem, const std::function<void()>& body) {
  emu::grid_dim = {unsigned(grid), 1, 1};
  emu::dynamic_smem.assign(smem / sizeof(double) + 1, std::nan(""));  // poisoned
  for (int b = 0; b < grid; ++b) {
    emu::block_idx = {unsigned(b), 0, 0};
    emu::block_barrier = std::make_unique<std::barrier<>>(emu::kBlock);
    for (auto& w : emu::warp_barrier) w = std::make_unique<std::barrier<>>(32);
    std::vector<std::thread> threads;
    for (int t = 0; t < emu::kBlock; ++t)
      threads.emplace_back([t, &body] {
        emu::thread_idx = {unsigned(t), 0, 0};
        body();
      });
    for (auto& th : threads) th.join();
  }
}

struct Input {
  std::vector<double> v;
  size_t pos = 0;
  double next() { return v.at(pos++); }
  std::vector<double> take(size_t n) {
    std::vector<double> out(v.begin() + pos, v.begin() + pos + n);
    pos += n;
    return out;
  }
};

template <typename scalar_t>
std::vector<scalar_t> cast(const std::vector<double>& v) {
  return std::vector<scalar_t>(v.begin(), v.end());
}

template <typename scalar_t>
std::vector<double> run(Input& in) {
  using acc_t = scalar_t;  // the emulation covers fp32 and fp64, where acc_t == scalar_t
  const bool gen = in.next() != 0;
  const int L = int(in.next());
  std::vector<int> width(L + 1);
  for (auto& w : width) w = int(in.next());
  const int64_t nr = int64_t(in.next()), nf = int64_t(in.next()), np = int64_t(in.next());
  const bool has_bias = in.next() != 0, has_bout = in.next() != 0;
  const double alpha = in.next();
  const bool paired = in.next() != 0;
  Term term[2];
  bool has_term[2];
  for (int t = 0; t < 2; ++t) {
    has_term[t] = in.next() != 0;
    term[t].phi = int(in.next());
    term[t].sign = in.next();
    term[t].shift = in.next();
    term[t].scale = in.next();
  }
  const int side = int(in.next()), kind = int(in.next());
  const double pen_weight = in.next(), pen_center = in.next();
  const int tile = int(in.next()), grid_cap = int(in.next());
  const int K = width[0];
  std::vector<scalar_t> x[3] = {cast<scalar_t>(in.take(nr * K)), cast<scalar_t>(in.take(nf * K)),
                                cast<scalar_t>(in.take(np * K))};
  std::vector<std::vector<scalar_t>> W(L), b(L);
  for (int l = 0; l < L; ++l) W[l] = cast<scalar_t>(in.take(size_t(width[l + 1]) * width[l]));
  if (has_bias)
    for (int l = 0; l < L; ++l) b[l] = cast<scalar_t>(in.take(width[l + 1]));
  const std::vector<scalar_t> w_out = cast<scalar_t>(in.take(width[L]));
  const std::vector<scalar_t> b_out = cast<scalar_t>(in.take(has_bout ? 1 : 0));

  const int64_t end[3] = {nr, nr + nf, nr + nf + np}, N = end[2];
  int64_t p0 = 0, p1 = 0;
  if (side >= 0) {
    p0 = side == 0 ? 0 : end[side - 1];
    p1 = end[side];
  }
  int max_w = 0;
  for (int w : width) max_w = w > max_w ? w : max_w;
  const int ld = odd_ld(max_w);

  FusedParams<scalar_t, acc_t> p{};
  for (int g = 0; g < 3; ++g) {
    p.x[g] = x[g].empty() ? nullptr : x[g].data();
    p.group_end[g] = end[g];
  }
  p.depth = L;
  for (int l = 0; l <= L; ++l) p.width[l] = width[l];
  for (int l = 0; l < L; ++l) {
    p.W[l] = W[l].data();
    p.b[l] = has_bias ? b[l].data() : nullptr;
  }
  p.w_out = w_out.data();
  p.alpha = acc_t(alpha);
  p.tile = tile;
  p.ld = ld;
  std::vector<acc_t> logits(N, acc_t(std::nan(""))), c(N, acc_t(0)), stats(5, acc_t(0));
  p.logits = logits.data();
  const auto grid_for = [&](int64_t rows) {
    const int64_t tiles = (rows + tile - 1) / tile;
    return int(tiles < grid_cap ? tiles : grid_cap);
  };

  // c and the stats: inline for unpaired losses, else a logits pass and the loss epilogue
  // (two blocks, to exercise the grid-stride loop and the atomics); as fused_loss() does.
  LossSpec<scalar_t> spec{};
  spec.b_out = has_bout ? b_out.data() : nullptr;
  spec.nr = nr;
  spec.nf = nf;
  spec.term_real = term[0];
  spec.term_fake = term[1];
  spec.has_real = has_term[0];
  spec.has_fake = has_term[1];
  p.loss = spec;
  p.stats = stats.data();
  p.inline_loss = !paired;
  const size_t logit_smem = size_t(fused_layout(L, width.data(), tile, ld, false).total) * sizeof(acc_t);
  if (paired) {
    p.row_begin = 0;
    p.row_end = N;
    launch(grid_for(N), logit_smem, [&] { fused_mlp_kernel<scalar_t, acc_t, MODE_LOGITS>(p); });
    LossParams<scalar_t, acc_t> lp{};
    lp.logits = logits.data();
    lp.spec = spec;
    lp.paired = paired;
    lp.c = c.data();
    lp.stats = stats.data();
    launch(2, 0, [&] { loss_epilogue_kernel<scalar_t, acc_t>(lp); });
    p.c = c.data();
  }

  std::vector<double> out;
  if (gen) {
    std::vector<scalar_t> grad(size_t(nf) * K, scalar_t(std::nan("")));
    p.grad = grad.data();
    p.row_begin = nr;
    p.row_end = N;
    launch(grid_for(nf), logit_smem, [&] { fused_mlp_kernel<scalar_t, acc_t, MODE_GEN>(p); });
    out.assign(stats.begin(), stats.end());
    out.insert(out.end(), grad.begin(), grad.end());
    return out;
  }
  std::vector<std::vector<acc_t>> dW(L), db(L);
  for (int l = 0; l < L; ++l) {
    dW[l].assign(size_t(width[l + 1]) * width[l], acc_t(0));
    p.dW[l] = dW[l].data();
    db[l].assign(width[l + 1], acc_t(0));
    p.db[l] = has_bias ? db[l].data() : nullptr;
  }
  std::vector<acc_t> dw_out(width[L], acc_t(0));
  p.dw_out = dw_out.data();
  p.penalty_sum = stats.data() + 1;
  p.pen_begin = p0;
  p.pen_end = p1;
  p.pen_kind = kind;
  p.pen_weight = acc_t(pen_weight);
  p.pen_center = acc_t(pen_center);
  p.row_begin = 0;
  p.row_end = N;
  const size_t disc_smem = size_t(fused_layout(L, width.data(), tile, ld, true).total) * sizeof(acc_t);
  launch(grid_for(N), disc_smem, [&] { fused_mlp_kernel<scalar_t, acc_t, MODE_DISC>(p); });
  out.assign(stats.begin(), stats.end());
  for (const auto& t : dW) out.insert(out.end(), t.begin(), t.end());
  if (has_bias)
    for (const auto& t : db) out.insert(out.end(), t.begin(), t.end());
  out.insert(out.end(), dw_out.begin(), dw_out.end());
  return out;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
    return 2;
  }
  Input in;
  FILE* f = std::fopen(argv[1], "rb");
  if (!f) return 3;
  double d;
  while (std::fread(&d, sizeof d, 1, f) == 1) in.v.push_back(d);
  std::fclose(f);
  const bool fp32 = in.next() != 0;
  const std::vector<double> out = fp32 ? run<float>(in) : run<double>(in);
  FILE* g = std::fopen(argv[2], "wb");
  if (!g) return 4;
  std::fwrite(out.data(), sizeof(double), out.size(), g);
  std::fclose(g);
  return 0;
}
