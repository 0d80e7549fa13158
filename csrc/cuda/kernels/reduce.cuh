// Warp and block reductions in double, in a fixed order (results do not
// depend on scheduling), shared by the truncated and merge kernels.
#pragma once

#include "loads.cuh"

namespace ocnna {
namespace cuda {
namespace {

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;  // every lane holds the total
}

// Sums of the N values v[] over the block, the same in every thread, with one
// barrier.  Calls alternate between the two halves of `red` (`turn` flips
// each call, in step in every thread): a thread writing a half has passed the
// previous call's barrier, which no thread reached before it had read the
// call before, the last one to use that half.  The barrier also publishes
// every shared write made before the call.
template <int N>
__device__ void block_sum(double (&v)[N], double* red, int& turn) {
#pragma unroll
  for (int k = 0; k < N; ++k) v[k] = warp_sum(v[k]);
  double* half = red + 16 * (turn ^= 1);
  if ((threadIdx.x & 31) == 0)
#pragma unroll
    for (int k = 0; k < N; ++k) half[N * (threadIdx.x >> 5) + k] = v[k];
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    double s = 0.0;
    for (int u = 0; u < warps; ++u) s += half[N * u + k];  // same order in every thread
    v[k] = s;
  }
}

}  // namespace
}  // namespace cuda
}  // namespace ocnna
