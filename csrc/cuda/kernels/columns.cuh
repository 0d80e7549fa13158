// n_components = None: the centred sums of squares of each map's columns
// (channels_inner_kernel for channels_last, columns_inner_kernel for NCHW).
#pragma once

#include "loads.cuh"

namespace ocnna {
namespace cuda {
namespace {

// ------------------------------------------------- n_components = None ----
// F^2 of map (i, c) = the centred sums of squares of its W columns.  Each
// thread takes whole columns, so every column is centred on its own first row
// (exact in the input's precision) and summed in double.  The columns of one
// map are summed in a fixed order inside one block (no atomics): the result
// does not depend on scheduling, and nothing needs zeroing first.  Blocks are
// short-lived (one tile each), so kernels of the forward pass running beside
// them on another stream get SMs as soon as a tile finishes.
constexpr int kChunk = 8;          // columns per thread, channels_last
constexpr int kReduceThreads = 256;  // block size bound of both None kernels
constexpr int64_t kMaxBlocks = 1 << 30;  // grid-stride loops take what is beyond

// One column, eight rows per step: the raw loads go out together (eight in
// flight per thread, which NCHW needs to keep enough bytes on the way with
// one column per thread), then feed four independent pairs of sums.  A
// non-finite value anywhere turns `poison` into NaN.
template <typename T>
__device__ __forceinline__ double column_ss(const T* col, int64_t h, int64_t sh, double& poison) {
  const double x0 = ld(col);
  double s1[4] = {0.0, 0.0, 0.0, 0.0}, s2[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t y = 1;
  for (; y + 7 < h; y += 8) {
    T r[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) r[j] = col[(y + j) * sh];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const double u = to_double(r[j]) - x0;
      s1[j & 3] += u;
      s2[j & 3] += u * u;
    }
  }
  for (; y < h; ++y) {
    const double u = ld(col + y * sh) - x0;
    s1[0] += u;
    s2[0] += u * u;
  }
  const double t1 = (s1[0] + s1[1]) + (s1[2] + s1[3]), t2 = (s2[0] + s2[1]) + (s2[2] + s2[3]);
  poison += t2 - t2 + x0 - x0;  // 0, or NaN for non-finite input
  return centred_ss_from_shifted(t1, t2, double(h));
}

// kCols (<= kChunk) neighbouring columns of one map, walked two rows at a
// time so a thread has 2 * kCols independent loads in flight; for
// channels_last a warp of neighbouring channels reads 128-byte runs.  The
// width is a template argument: a runtime width needs predicates and
// registers that cost occupancy.
template <int kCols, typename T>
__device__ __forceinline__ double chunk_ss(const T* base, int64_t h, int64_t sh, int64_t sw, double& poison) {
  // the first row, kept exactly in the narrowest type (fewer registers, more loads in flight)
  using P = typename ExactFloat<T>::type;
  P x0[kCols];
  double s1[kCols], s2[kCols];
#pragma unroll
  for (int j = 0; j < kCols; ++j) {
    x0[j] = P(ld(base + j * sw));
    s1[j] = 0.0;
    s2[j] = 0.0;
  }
  int64_t y = 1;
  for (; y + 1 < h; y += 2) {
    const T* r0 = base + y * sh;
    const T* r1 = r0 + sh;
    T a[kCols], b[kCols];  // raw loads: converted only when used
#pragma unroll
    for (int j = 0; j < kCols; ++j) {
      a[j] = r0[j * sw];
      b[j] = r1[j * sw];
    }
#pragma unroll
    for (int j = 0; j < kCols; ++j) {
      const double u = to_double(a[j]) - double(x0[j]), v = to_double(b[j]) - double(x0[j]);
      s1[j] += u;
      s2[j] += u * u;
      s1[j] += v;
      s2[j] += v * v;
    }
  }
  if (y < h) {
    const T* r0 = base + y * sh;
#pragma unroll
    for (int j = 0; j < kCols; ++j) {
      const double u = ld(r0 + j * sw) - double(x0[j]);
      s1[j] += u;
      s2[j] += u * u;
    }
  }
  double ss = 0.0;
#pragma unroll
  for (int j = 0; j < kCols; ++j) {
    poison += s2[j] - s2[j] + double(x0[j]) - double(x0[j]);
    ss += centred_ss_from_shifted(s1[j], s2[j], double(h));
  }
  return ss;
}

template <typename T>
__device__ __forceinline__ double chunk_ss(const T* base, int cols, int64_t h, int64_t sh, int64_t sw,
                                           double& poison) {
  switch (cols) {
    case 8: return chunk_ss<8>(base, h, sh, sw, poison);
    case 7: return chunk_ss<7>(base, h, sh, sw, poison);
    case 6: return chunk_ss<6>(base, h, sh, sw, poison);
    case 5: return chunk_ss<5>(base, h, sh, sw, poison);
    case 4: return chunk_ss<4>(base, h, sh, sw, poison);
    case 3: return chunk_ss<3>(base, h, sh, sw, poison);
    case 2: return chunk_ss<2>(base, h, sh, sw, poison);
    default: return chunk_ss<1>(base, h, sh, sw, poison);
  }
}
static_assert(kChunk == 8, "chunk_ss dispatches widths 1..8");

// How the channels-inner kernel splits a map row: `chunks` chunks of at most
// `width` (<= kChunk) columns, as even as possible (W = 28 -> 4 x 7, not
// 3 x 8 + 4); `kt` threads per map take chunks kt, kt + KT, ... (at most 8,
// balanced: 14 chunks -> 7 threads x 2); `images` maps of one channel per tile.
struct ChunkSplit {
  int width, chunks, kt, images;
};

__host__ __device__ inline ChunkSplit chunk_split(int64_t w) {
  ChunkSplit s;
  const int64_t c0 = (w + kChunk - 1) / kChunk;
  s.width = int((w + c0 - 1) / c0);
  s.chunks = int((w + s.width - 1) / s.width);
  const int rounds = (s.chunks + 7) / 8;
  s.kt = (s.chunks + rounds - 1) / rounds;
  s.images = s.kt >= 8 ? 1 : 8 / s.kt;
  return s;
}

// Channels innermost (channels_last): a block takes a tile of 32 neighbouring
// channels x `images` images, thread (g, k, lane) = (image, chunk slot,
// channel), so each warp reads one row segment of 32 channels.  The chunk
// slots of a map are summed in slot order through shared memory.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads, 3) channels_inner_kernel(MapBatch x, ChunkSplit sp, double* ss_out) {
  __shared__ double red[kReduceThreads];
  const int lane = threadIdx.x & 31, slot = (threadIdx.x >> 5) % sp.kt, g = (threadIdx.x >> 5) / sp.kt;
  const int64_t ctiles = (x.c + 31) / 32, itiles = (x.n + sp.images - 1) / sp.images;
  for (int64_t tile = blockIdx.x; tile < ctiles * itiles; tile += gridDim.x) {
    const int64_t c = (tile % ctiles) * 32 + lane, i = (tile / ctiles) * sp.images + g;
    const bool active = c < x.c && i < x.n;
    double ss = 0.0, poison = 0.0;
    if (active) {
      const T* base = static_cast<const T*>(x.data) + x.offset(i, c, 0, 0);
      for (int k = slot; k < sp.chunks; k += sp.kt) {
        const int64_t first = int64_t(k) * sp.width;
        const int cols = int(x.w - first < sp.width ? x.w - first : sp.width);
        ss += chunk_ss(base + first * x.sw, cols, x.h, x.sh, x.sw, poison);
      }
    }
    red[threadIdx.x] = ss + poison;
    __syncthreads();
    if (active && slot == 0) {
      double s = 0.0;
      for (int k = 0; k < sp.kt; ++k) s += red[(g * sp.kt + k) * 32 + lane];
      ss_out[i * x.c + c] = s;
    }
    __syncthreads();  // red is reused by the next tile
  }
}

// Columns innermost (NCHW and the like): `span` threads per map take columns
// x, x + span, ... (a warp reads a contiguous run of a row), and a block holds
// `per` whole maps, so a map's columns are summed in one block, in order.
template <typename T>
__global__ void columns_inner_kernel(MapBatch x, double* ss_out) {
  __shared__ double red[kReduceThreads];
  const int span = x.w < kReduceThreads ? int(x.w) : kReduceThreads;
  const int per = kReduceThreads / span;
  const int j = threadIdx.x / span, col = threadIdx.x % span;
  const int64_t maps = x.n * x.c;
  for (int64_t group = blockIdx.x; group * per < maps; group += gridDim.x) {
    const int64_t m = group * per + j;
    const bool active = j < per && m < maps;
    double ss = 0.0, poison = 0.0;
    if (active) {
      const int64_t i = m / x.c, c = m % x.c;
      const T* base = static_cast<const T*>(x.data) + x.offset(i, c, 0, 0);
      for (int64_t xx = col; xx < x.w; xx += span) ss += column_ss(base + xx * x.sw, x.h, x.sh, poison);
    }
    red[threadIdx.x] = ss + poison;
    __syncthreads();
    if (active && col == 0) {
      double s = 0.0;
      for (int k = 0; k < span; ++k) s += red[j * span + k];
      ss_out[m] = s;
    }
    __syncthreads();
  }
}

__global__ void sqrt_kernel(double* v, int64_t n) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t < n) v[t] = sqrt(v[t]);
}

}  // namespace
}  // namespace cuda
}  // namespace ocnna
