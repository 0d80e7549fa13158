// Just enough of CUDA's device built-ins to run csrc/cuda/kernels.cuh on the
// CPU, so the kernels' index arithmetic, barriers, warp reductions and the
// merge's last-block ticket are checked where no GPU is lent (CI, most dev
// machines).  Every CUDA thread of a block is an OS thread; blocks run one
// after another.  This checks logic, not speed, nor races between blocks.
//
// Include this first, then kernels.cuh; launch with ocnna_emu::launch.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// one block runs at a time, so a function-level static is that block's shared memory
#define __shared__ static
#define OCNNA_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(ocnna_emu::dynamic_shared)

namespace ocnna_emu {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

struct Warp {
  std::barrier<> sync{32};
  double value[32];
  bool flag[32];
};

inline thread_local Dim3 thread_idx, block_idx;
inline Dim3 block_dim, grid_dim;
inline thread_local std::barrier<>* block_sync = nullptr;
inline thread_local Warp* warp = nullptr;
inline double* dynamic_shared = nullptr;

inline int lane() { return int(thread_idx.x % 32); }

// Runs body() as a grid of `grid` blocks of `block` threads (block % 32 == 0).
template <typename Body>
void launch(int grid, int block, size_t shared_bytes, Body body) {
  grid_dim.x = unsigned(grid);
  block_dim.x = unsigned(block);
  std::vector<double> shared(shared_bytes / sizeof(double) + 1);
  dynamic_shared = shared.data();
  for (int b = 0; b < grid; ++b) {
    std::barrier<> bsync(block);
    std::vector<std::unique_ptr<Warp>> warps;
    for (int w = 0; w < (block + 31) / 32; ++w) warps.push_back(std::make_unique<Warp>());
    std::vector<std::thread> threads;
    threads.reserve(size_t(block));
    for (int t = 0; t < block; ++t) {
      threads.emplace_back([&, t] {
        thread_idx.x = unsigned(t);
        block_idx.x = unsigned(b);
        block_sync = &bsync;
        warp = warps[size_t(t / 32)].get();
        body();
        // a thread that has returned no longer holds back its block's or warp's barriers
        warp->sync.arrive_and_drop();
        bsync.arrive_and_drop();
      });
    }
    for (auto& th : threads) th.join();
  }
  dynamic_shared = nullptr;
}

}  // namespace ocnna_emu

#define threadIdx (ocnna_emu::thread_idx)
#define blockIdx (ocnna_emu::block_idx)
#define blockDim (ocnna_emu::block_dim)
#define gridDim (ocnna_emu::grid_dim)

inline void __syncthreads() { ocnna_emu::block_sync->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <typename T>
T __ldcg(const T* p) {
  return *p;
}

namespace ocnna_emu {
// Every lane posts v and reads the value of lane source(its lane), or keeps
// its own where the source is outside the warp.
template <typename Source>
double exchange(double v, Source source) {
  Warp& w = *warp;
  const int l = lane(), from = source(l);
  w.value[l] = v;
  w.sync.arrive_and_wait();
  const double r = from >= 0 && from < 32 ? w.value[from] : v;
  w.sync.arrive_and_wait();
  return r;
}
}  // namespace ocnna_emu

inline double __shfl_xor_sync(unsigned, double v, int offset) {
  return ocnna_emu::exchange(v, [offset](int l) { return l ^ offset; });
}

inline unsigned __ballot_sync(unsigned, bool p) {
  ocnna_emu::Warp& w = *ocnna_emu::warp;
  w.flag[ocnna_emu::lane()] = p;
  w.sync.arrive_and_wait();
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l) bits |= unsigned(w.flag[l]) << l;
  w.sync.arrive_and_wait();
  return bits;
}

inline int __any_sync(unsigned mask, bool p) { return __ballot_sync(mask, p) != 0; }

inline int __popc(unsigned v) { return __builtin_popcount(v); }

inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}

inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  std::atomic_ref<unsigned long long> a(*p);
  unsigned long long old = a.load();
  while (v < old && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
