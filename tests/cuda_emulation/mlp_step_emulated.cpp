// Runs the fused-path kernels of the CUDA MLP step (csrc/mlp_step_fused.cuh and the epilogue
// kernels of csrc/mlp_step_epilogue.cuh) on the CPU: every CUDA thread of a block is a
// std::thread, __syncthreads is a block barrier, warp shuffles go through a per-warp buffer
// with a warp barrier, atomicAdd takes a mutex, and blocks run one after another, in index
// order or in reverse (to show that results do not depend on block scheduling). Shared memory
// is poisoned with NaN before every block. This checks the kernels' indexing, tiling, barriers
// and reductions where no GPU is available; it says nothing about speed. Driven by
// tests/test_mlp_step_cuda_emulated.py.
//
// Usage: mlp_step_emulated IN OUT. IN holds float64 values: a header (fp32?, MmaMode, then
// see run()), then
// real, fake, penalty_input rows, W_1..W_L, b_1..b_L, w_out, b_out, and with dropout the masks of
// each row group that has rows (real, fake, penalty_input), layer by layer. OUT receives float64:
// disc: (loss, penalty, mean real, mean fake, db_out (0 without b_out)), dW_1..dW_L,
// db_1..db_L, dw_out; gen: (loss, mean fake logit), d loss / d fake.
// First every CUDA / c10 header that cuda_utils.cuh pulls in: they use the names redefined below.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
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

// ---- nvcuda::wmma (the subset mlp_step_fused.cuh uses: TF32 m16n16k8) -----------------------
// A fragment's layout is opaque to kernel code, so the emulator picks one: element e of the
// row-major (rows x cols) fragment matrix lives in lane e % 32, slot e / 32. Every collective
// (load, store, mma) meets the 32 lanes of its warp at a barrier, so a lane that skips one
// deadlocks the test instead of passing. mma_sync gathers the fragments of all lanes through a
// per-warp buffer, truncates the operands to TF32 (10-bit mantissa; the hardware ignores the low
// 13 bits) and accumulates in fp32; __float_to_tf32 rounds to nearest, ties away from zero.
namespace emu {
float mma_a[kBlock / 32][16 * 8], mma_b[kBlock / 32][8 * 16], mma_c[kBlock / 32][16 * 16];
inline float tf32_bits(float x, unsigned add) {
  unsigned u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + add) & 0xffffe000u;  // not inf / nan
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}
inline void warp_sync() { warp_barrier[thread_idx.x >> 5]->arrive_and_wait(); }
// WMMA loads and stores need a 256-bit aligned pointer and a stride of a multiple of 16 bytes.
inline void check_wmma_address(const float* p, unsigned ld) {
  const auto base = reinterpret_cast<uintptr_t>(dynamic_smem.data()), a = reinterpret_cast<uintptr_t>(p);
  if ((a - base) % 32 != 0 || ld % 4 != 0) {
    std::fprintf(stderr, "misaligned WMMA access: offset %zu bytes, ld %u\n", size_t(a - base), ld);
    std::abort();
  }
}
}  // namespace emu

namespace nvcuda {
namespace wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

inline float __float_to_tf32(float x) { return emu::tf32_bits(x, 0x1000u); }

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
  static constexpr int num_elements = rows * cols / 32;
  static constexpr bool row_layout = !std::is_same<Layout, col_major>::value;
  float x[num_elements];
};

template <typename F>
void load_fragment(F& f, const float* p, unsigned ld, bool row) {
  emu::check_wmma_address(p, ld);
  emu::warp_sync();
  const int lane = emu::thread_idx.x & 31;
  for (int s = 0; s < F::num_elements; ++s) {
    const int e = s * 32 + lane, r = e / F::cols, c = e % F::cols;
    f.x[s] = row ? p[size_t(r) * ld + c] : p[size_t(c) * ld + r];
  }
  emu::warp_sync();
}
template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const float* p, unsigned ld) {
  load_fragment(f, p, ld, fragment<Use, M, N, K, T, Layout>::row_layout);
}
template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ld, layout_t layout) {
  load_fragment(f, p, ld, layout == mem_row_major);
}
template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ld, layout_t layout) {
  using F = fragment<accumulator, M, N, K, float>;
  emu::check_wmma_address(p, ld);
  emu::warp_sync();
  const int lane = emu::thread_idx.x & 31;
  for (int s = 0; s < F::num_elements; ++s) {
    const int e = s * 32 + lane, r = e / F::cols, c = e % F::cols;
    (layout == mem_row_major ? p[size_t(r) * ld + c] : p[size_t(c) * ld + r]) = f.x[s];
  }
  emu::warp_sync();
}
template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float v) {
  for (float& x : f.x) x = v;
}
template <typename LA, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 8, float>& d, const fragment<matrix_a, 16, 16, 8, precision::tf32, LA>& a,
              const fragment<matrix_b, 16, 16, 8, precision::tf32, LB>& b,
              const fragment<accumulator, 16, 16, 8, float>& c) {
  const int lane = emu::thread_idx.x & 31, warp = emu::thread_idx.x >> 5;
  for (int s = 0; s < 4; ++s) {
    emu::mma_a[warp][s * 32 + lane] = emu::tf32_bits(a.x[s], 0);
    emu::mma_b[warp][s * 32 + lane] = emu::tf32_bits(b.x[s], 0);
  }
  for (int s = 0; s < 8; ++s) emu::mma_c[warp][s * 32 + lane] = c.x[s];
  emu::warp_sync();
  float out[8];
  for (int s = 0; s < 8; ++s) {
    const int e = s * 32 + lane, r = e / 16, col = e % 16;
    float acc = emu::mma_c[warp][e];
    for (int k = 0; k < 8; ++k) acc += emu::mma_a[warp][r * 8 + k] * emu::mma_b[warp][k * 16 + col];
    out[s] = acc;
  }
  emu::warp_sync();
  for (int s = 0; s < 8; ++s) d.x[s] = out[s];
}
}  // namespace wmma
}  // namespace nvcuda

#define FASTGAN_CUDA_EMULATION
#include "mlp_step_fused.cuh"

namespace {
using namespace fastgan;

bool reverse_blocks = false;  // run blocks grid-1, ..., 0 instead of 0, ..., grid-1

// Runs body() as grid blocks of 256 threads with `smem` bytes of dynamic shared memory.
void launch(int grid, size_t smem, const std::function<void()>& body) {
  emu::grid_dim = {unsigned(grid), 1, 1};
  for (int i = 0; i < grid; ++i) {
    const int b = reverse_blocks ? grid - 1 - i : i;
    emu::dynamic_smem.assign(smem / sizeof(double) + 1, std::nan(""));  // poisoned
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
    if (pos + n > v.size()) {
      std::fprintf(stderr, "input too short: %zu values, %zu wanted\n", v.size(), pos + n);
      std::exit(6);
    }
    std::vector<double> out(v.begin() + pos, v.begin() + pos + n);
    pos += n;
    return out;
  }
};

template <typename scalar_t>
std::vector<scalar_t> cast(const std::vector<double>& v) {
  return std::vector<scalar_t>(v.begin(), v.end());
}

template <typename scalar_t, int MMA>
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
  reverse_blocks = in.next() != 0;
  const bool dropout = in.next() != 0;
  const int K = width[0];
  std::vector<scalar_t> x[3] = {cast<scalar_t>(in.take(nr * K)), cast<scalar_t>(in.take(nf * K)),
                                cast<scalar_t>(in.take(np * K))};
  std::vector<std::vector<scalar_t>> W(L), b(L);
  for (int l = 0; l < L; ++l) W[l] = cast<scalar_t>(in.take(size_t(width[l + 1]) * width[l]));
  if (has_bias)
    for (int l = 0; l < L; ++l) b[l] = cast<scalar_t>(in.take(width[l + 1]));
  const std::vector<scalar_t> w_out = cast<scalar_t>(in.take(width[L]));
  const std::vector<scalar_t> b_out = cast<scalar_t>(in.take(has_bout ? 1 : 0));
  std::vector<std::vector<scalar_t>> drop[3];  // per group with rows: (rows_g, H_l) per layer
  const int64_t group_rows[3] = {nr, nf, np};
  for (int g = 0; g < 3 && dropout; ++g)
    for (int l = 0; l < L && group_rows[g] > 0; ++l) drop[g].push_back(cast<scalar_t>(in.take(group_rows[g] * width[l + 1])));
  if (in.pos != in.v.size()) {  // the header and the tensors must describe the input exactly
    std::fprintf(stderr, "input has %zu values, the header describes %zu\n", in.v.size(), in.pos);
    std::exit(7);
  }

  const int64_t end[3] = {nr, nr + nf, nr + nf + np}, N = end[2];
  int64_t p0 = 0, p1 = 0;
  if (side >= 0) {
    p0 = side == 0 ? 0 : end[side - 1];
    p1 = end[side];
  }
  int max_w = 0;
  for (int w : width) max_w = w > max_w ? w : max_w;
  const int ld = fused_ld(max_w, MMA != MMA_NONE);

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
  p.dropout = dropout;
  for (int g = 0; g < 3; ++g)
    for (int l = 0; l < kMaxDepth; ++l) p.drop[g][l] = l < int(drop[g].size()) ? drop[g][l].data() : nullptr;
  p.alpha = acc_t(alpha);
  p.tile = tile;
  p.ld = ld;
  std::vector<acc_t> logits(N, acc_t(std::nan(""))), c(N, acc_t(std::nan(""))), extra(kStats, acc_t(std::nan("")));
  const auto grid_for = [&](int64_t rows) {
    const int64_t tiles = (rows + tile - 1) / tile;
    return int(tiles < grid_cap ? tiles : grid_cap);
  };

  // c and the stats: inline for unpaired losses, else a logits pass and the loss epilogue
  // (one block) first; as fused_paired_loss() in mlp_step.cu does.
  LossSpec<scalar_t> spec{};
  spec.b_out = has_bout ? b_out.data() : nullptr;
  spec.nr = nr;
  spec.nf = nf;
  spec.term_real = term[0];
  spec.term_fake = term[1];
  spec.has_real = has_term[0];
  spec.has_fake = has_term[1];
  p.loss = spec;
  p.has_bias = has_bias;
  p.inline_loss = !paired;
  const size_t logit_smem = size_t(fused_layout(L, width.data(), tile, ld, false, MMA != MMA_NONE).total) * sizeof(acc_t);
  if (paired) {
    p.logits = logits.data();
    p.row_begin = 0;
    p.row_end = N;
    launch(grid_for(N), logit_smem, [&] { fused_mlp_kernel<scalar_t, acc_t, MODE_LOGITS, MMA>(p); });
    LossParams<scalar_t, acc_t> lp{};
    lp.logits = logits.data();
    lp.spec = spec;
    lp.paired = paired;
    lp.c = c.data();
    lp.stats = extra.data();
    launch(1, 0, [&] { loss_epilogue_kernel<scalar_t, acc_t>(lp); });
    p.c = c.data();
  }

  std::vector<double> out;
  if (gen) {
    const int grid = grid_for(nf);
    std::vector<acc_t> partials(size_t(grid) * kStats, acc_t(std::nan("")));
    std::vector<scalar_t> grad(size_t(nf) * K, scalar_t(std::nan(""))), stats(2, scalar_t(std::nan("")));
    p.partials = partials.data();
    p.grad = grad.data();
    p.row_begin = nr;
    p.row_end = N;
    launch(grid, logit_smem, [&] { fused_mlp_kernel<scalar_t, acc_t, MODE_GEN, MMA>(p); });
    ReduceParams<scalar_t, acc_t> rp{};
    rp.partials = partials.data();
    rp.blocks = grid;
    rp.stride = kStats;
    rp.extra = paired ? extra.data() : nullptr;
    rp.seg_begin[0] = kStats;
    rp.stats_out = stats.data();
    rp.gen = true;
    rp.inv_nf = acc_t(1) / acc_t(nf);
    launch(1, 0, [&] { reduce_partials_kernel<scalar_t, acc_t>(rp); });
    out.assign(stats.begin(), stats.end());
    out.insert(out.end(), grad.begin(), grad.end());
    return out;
  }
  const int grid = grid_for(N);
  const PartialLayout q = partial_layout(L, width.data(), has_bias, true);
  std::vector<acc_t> partials(size_t(grid) * q.stride, acc_t(std::nan("")));
  p.partials = partials.data();
  p.pen_begin = p0;
  p.pen_end = p1;
  p.pen_kind = kind;
  p.pen_weight = acc_t(pen_weight);
  p.pen_center = acc_t(pen_center);
  p.row_begin = 0;
  p.row_end = N;
  const size_t disc_smem = size_t(fused_layout(L, width.data(), tile, ld, true, MMA != MMA_NONE).total) * sizeof(acc_t);
  launch(grid, disc_smem, [&] { fused_mlp_kernel<scalar_t, acc_t, MODE_DISC, MMA>(p); });

  // The reduction as launch_reduce_disc() lays it out, over two blocks (grid-stride loop).
  std::vector<std::vector<scalar_t>> dW(L), db(L);
  std::vector<scalar_t> dw_out(width[L], scalar_t(std::nan(""))), stats(4, scalar_t(std::nan(""))),
      b_out_grad(1, scalar_t(0));
  ReduceParams<scalar_t, acc_t> rp{};
  rp.partials = partials.data();
  rp.blocks = grid;
  rp.stride = q.stride;
  rp.extra = paired ? extra.data() : nullptr;
  const auto add = [&](int begin, std::vector<scalar_t>& v) {
    rp.seg_begin[rp.segments] = begin;
    rp.seg_out[rp.segments++] = v.data();
  };
  for (int l = 0; l < L; ++l) {
    dW[l].assign(size_t(width[l + 1]) * width[l], scalar_t(std::nan("")));
    add(q.dw[l], dW[l]);
  }
  for (int l = 0; l < L && has_bias; ++l) {
    db[l].assign(width[l + 1], scalar_t(std::nan("")));
    add(q.db[l], db[l]);
  }
  add(q.dw_out, dw_out);
  rp.seg_begin[rp.segments] = q.stride;
  rp.stats_out = stats.data();
  rp.b_out_grad = has_bout ? b_out_grad.data() : nullptr;
  rp.inv_nr = acc_t(1) / acc_t(nr);
  rp.inv_nf = acc_t(1) / acc_t(nf);
  launch(2, 0, [&] { reduce_partials_kernel<scalar_t, acc_t>(rp); });
  out.assign(stats.begin(), stats.end());
  out.push_back(b_out_grad[0]);
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
  const int mma = int(in.next());  // MmaMode; fp32 only
  if (mma != MMA_NONE && !fp32) return 5;
  const std::vector<double> out = !fp32                 ? run<double, MMA_NONE>(in)
                                  : mma == MMA_TF32     ? run<float, MMA_TF32>(in)
                                  : mma == MMA_TF32X3   ? run<float, MMA_TF32X3>(in)
                                                        : run<float, MMA_NONE>(in);
  FILE* g = std::fopen(argv[2], "wb");
  if (!g) return 4;
  std::fwrite(out.data(), sizeof(double), out.size(), g);
  std::fclose(g);
  return 0;
}
