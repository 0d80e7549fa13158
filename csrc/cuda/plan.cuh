// The launch plan: which energy kernel a batch takes, with what grid and
// shared memory, and the merge's grid.
#pragma once

#include "kernels/block_map.cuh"
#include "kernels/columns.cuh"
#include "kernels/merge.cuh"

namespace ocnna {
namespace cuda {
namespace {

// ------------------------------------------------------------ launch plan --
// Which kernel computes a batch's energies, with what shape.  Host code, used
// by scorer_cuda.cu and by the emulation test alike.
enum class EnergyKernel { ChannelsInner, ColumnsInner, BlockMap, BlockMapGlobal };

struct EnergyPlan {
  EnergyKernel kernel;
  int blocks = 0, threads = 0;
  size_t smem_bytes = 0;  // dynamic shared memory per block (BlockMap)
  size_t ws_bytes = 0;    // global workspace of all blocks (BlockMapGlobal)
  ChunkSplit split{};     // ChannelsInner
  double rel_tol = 0.0;   // BlockMap*: where the Sturm multisection stops
  bool sums = false;      // out holds F^2 (the None path); the square root is left to the caller
};

constexpr size_t kMaxWorkspace = size_t(1) << 30;  // global workspace of BlockMapGlobal, bytes

inline EnergyPlan plan_energies(const MapBatch& x, const EnergyParams& p, int sms, int smem_optin) {
  EnergyPlan plan;
  const int64_t maps = x.n * x.c;
  const int h = int(x.h), w = int(x.w);
  if (!needs_eigen(p, h, w)) {
    plan.sums = true;
    if ((x.sc < 0 ? -x.sc : x.sc) < (x.sw < 0 ? -x.sw : x.sw)) {
      plan.kernel = EnergyKernel::ChannelsInner;
      plan.split = chunk_split(x.w);
      const int64_t tiles = ((x.c + 31) / 32) * ((x.n + plan.split.images - 1) / plan.split.images);
      plan.blocks = int(tiles < kMaxBlocks ? tiles : kMaxBlocks);
      plan.threads = 32 * plan.split.kt * plan.split.images;
    } else {
      plan.kernel = EnergyKernel::ColumnsInner;
      const int64_t per = kReduceThreads / (x.w < kReduceThreads ? x.w : kReduceThreads);
      const int64_t groups = (maps + per - 1) / per;
      plan.blocks = int(groups < kMaxBlocks ? groups : kMaxBlocks);
      plan.threads = kReduceThreads;
    }
    return plan;
  }
  const int d = h < w ? h : w;
  // one warp for small maps (7x7, 14x14: thousands per image, little work each)
  plan.threads = d <= 16 ? 32 : (d <= 32 ? 64 : (d <= 64 ? 128 : 256));
  static_assert(256 <= kMaxMapThreads, "block_sum has slots for every warp");
  // Multisection stops at this width relative to the spectrum (trace 1): the
  // resolution of the compute type (float for inputs of float precision,
  // double for float64), where it would stop anyway.
  const bool f64 = x.dtype == kFloat64;
  plan.rel_tol = f64 ? 2e-16 : 2e-7;
  const size_t bytes = size_t(f64 ? block_buffer_bytes<double>(h, w) : block_buffer_bytes<float>(h, w));
  if (bytes <= size_t(smem_optin)) {
    plan.kernel = EnergyKernel::BlockMap;
    const int64_t cap = int64_t(sms) * 64;
    plan.blocks = int(maps < cap ? maps : cap);
    plan.smem_bytes = bytes;
  } else {  // too large for shared memory: one global slice per block
    plan.kernel = EnergyKernel::BlockMapGlobal;
    // four blocks per SM, fewer where their slices would pass kMaxWorkspace
    // (a 1000x1000 float map needs 8 MB)
    const int64_t fit = int64_t(kMaxWorkspace / bytes);
    int64_t cap = int64_t(sms) * 4;
    cap = fit < cap ? fit : cap;
    cap = cap > 1 ? cap : 1;
    plan.blocks = int(maps < cap ? maps : cap);
    plan.ws_bytes = bytes * size_t(plan.blocks);
  }
  return plan;
}

constexpr int kMergeThreads = 256;  // merge_kernel: one warp per channel
inline int merge_blocks(int64_t channels) { return int((channels * 32 + kMergeThreads - 1) / kMergeThreads); }

}  // namespace
}  // namespace cuda
}  // namespace ocnna
