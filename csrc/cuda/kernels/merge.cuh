// Accumulation: one batch's per-map energies folded into the per-filter
// (count, mean, M2) accumulators.
#pragma once

#include "loads.cuh"
#include "reduce.cuh"

namespace ocnna {
namespace cuda {
namespace {

// ------------------------------------------------------- accumulation --
// One warp per channel: the batch's energies (square roots of the None path's
// sums taken here), their (mean, M2) by two passes, into bmean/bm2.  The last
// block to finish merges every channel with Chan's rule, or none if any
// channel held a non-finite value: a batch is accepted or rejected whole.
// Status words (scorer_cuda.h): [0] is for the host; [1] (first non-finite
// channel of this batch) and [2] (blocks finished, the ticket that finds the
// last block) are scratch the last block puts back to -1 and 0, so a batch
// needs no memset.  Summation orders are fixed: results are reproducible.
__global__ void merge_kernel(const double* f, int64_t n, int64_t c, bool take_sqrt, double* bmean, double* bm2,
                             double* count, double* mean, double* m2, int64_t* status) {
  __shared__ bool last;
  auto* word = reinterpret_cast<unsigned long long*>(status);
  const int lane = threadIdx.x & 31;
  const int64_t ch = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5;
  if (ch < c) {  // whole warps: blockDim is a multiple of 32
    auto energy = [&](int64_t i) { return take_sqrt ? sqrt(f[i * c + ch]) : f[i * c + ch]; };
    double s = 0.0;
    bool bad = false, failed = false;  // non-finite input; a solve of ours failed (kSolveFailed)
    for (int64_t i = lane; i < n; i += 32) {
      const double v = energy(i);
      bad = bad || !is_finite(v);
      failed = failed || v < 0.0;
      s += v;
    }
    bad = __any_sync(0xffffffffu, bad);
    failed = __any_sync(0xffffffffu, failed);
    const double mb = warp_sum(s) / double(n);
    double q = 0.0;
    for (int64_t i = lane; i < n; i += 32) {
      const double d = energy(i) - mb;
      q += d * d;
    }
    q = warp_sum(q);
    if (lane == 0) {
      bmean[ch] = mb;
      bm2[ch] = q;
      // bad input outranks an internal failure in the same batch
      if (bad || failed)
        atomicMin(word + 1, static_cast<unsigned long long>(bad ? ch : ch + kInternalFlag));
    }
  }
  __threadfence();  // this block's results are visible before its ticket is
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(word + 2, 1ull) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const unsigned long long first_bad = *reinterpret_cast<volatile unsigned long long*>(word + 1);
  if (first_bad == ~0ull) {
    for (int64_t k = threadIdx.x; k < c; k += blockDim.x)
      chan_merge(count[k], mean[k], m2[k], double(n), __ldcg(bmean + k), __ldcg(bm2 + k));
  } else if (threadIdx.x == 0 && status[0] < 0) {
    status[0] = static_cast<int64_t>(first_bad);
  }
  __syncthreads();  // every thread has read word[1]
  if (threadIdx.x == 0) {
    word[1] = ~0ull;
    word[2] = 0ull;
  }
}

}  // namespace
}  // namespace cuda
}  // namespace ocnna
