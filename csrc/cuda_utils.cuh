// Small CUDA helpers shared by the .cu files: accumulation types and a block-wide sum.
#pragma once
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace fastgan {

// fp32 accumulation for fp32/fp16/bf16, fp64 for fp64.
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Sum over the block; the result is valid in thread 0. blockDim.x must be a multiple of 32.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v) {
  __shared__ acc_t partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int nwarps = blockDim.x >> 5;
  v = threadIdx.x < nwarps ? partial[threadIdx.x] : acc_t(0);
  if (warp == 0) v = warp_sum(v);
  __syncthreads();
  return v;
}

inline int blocks_for(int64_t n, int threads, int max_blocks = 4096) {
  int64_t b = (n + threads - 1) / threads;
  return int(b < max_blocks ? (b > 0 ? b : 1) : max_blocks);
}

}  // namespace fastgan
