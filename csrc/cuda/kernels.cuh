// Device code of the CUDA core: every kernel, and the launch plan that picks
// one for a batch.  Kept apart from the host code (scorer_cuda.cu) so that
// tests/native/ can compile it for the CPU with a small emulation of the CUDA
// built-ins and check the kernels where no GPU is lent.
//
//   channels_inner_kernel  n_components=None, channels_last: one pass, a warp
//   columns_inner_kernel   reads 32 channels (or a row run for NCHW); each
//                          map's columns are summed in a fixed order.
//   block_map_kernel       truncated: one block per map (one warp when
//                          min(H, W) <= 16); Gram and Householder steps spread
//                          over the block, then every eigenvalue found at once
//                          by Sturm multisection (a few lanes per eigenvalue), in
//                          float for inputs of float precision.  The map and
//                          Gram sit in shared memory up to the device's opt-in
//                          limit (112x112 fits on Hopper); beyond it the same
//                          kernel works in a global workspace.
//   merge_kernel           folds a batch's energies into the accumulators.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../common/map_batch.h"
#include "../common/ocnna_math.h"

// Dynamic shared memory; the CPU emulation defines its own.
#ifndef OCNNA_DYNAMIC_SHARED
#define OCNNA_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

namespace ocnna {
namespace cuda {
namespace {

// ------------------------------------------------------------------ loads --
template <typename T>
__device__ __forceinline__ double ld(const T* p) {
  return to_double(*p);
}

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

// ------------------------------------------------------ truncated maps --
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
constexpr int kMaxMapThreads = 8 * 32;  // 8 warps x 2 sums fill a half of the 32 slots

// Lanes per eigenvalue in the multisection: the most, up to a whole warp,
// that let d eigenvalues share nt threads (a power of two, so that groups sit
// inside warps).
__host__ __device__ inline int multisection_lanes(int d, int nt) {
  int g = 1;
  while (g < 32 && 2 * g * d <= nt) g *= 2;
  return g;
}

// tridiagonal_kth_largest (common/ocnna_math.h) with its g points on g
// neighbouring lanes: one Sturm count per lane shrinks the interval
// (g + 1)-fold (bisection: twofold), and a ballot joins the group's counts.
// Every lane of the warp calls this, in step; k < 0 marks a lane with no
// eigenvalue to find.
template <typename S>
__device__ S kth_largest_multisection(const S* diag, const S* off, int d, int k, int g, S lo, S hi, S tol) {
  const int lane = threadIdx.x & 31, part = lane & (g - 1);
  const unsigned group = (g == 32 ? 0xffffffffu : (1u << g) - 1u) << (lane - part);
  const int target = d - 1 - k;  // the eigenvalue's index counted from the smallest
  bool done = k < 0;
  for (int it = 0; it < 128; ++it) {
    done = done || !(hi - lo > tol);
    if (!__any_sync(0xffffffffu, !done)) break;
    // true where this lane's point lies at or below the eigenvalue
    const bool below = !done && sturm_count_below(diag, off, d, multisection_point(lo, hi, g, part)) <= target;
    const int j = __popc(__ballot_sync(0xffffffffu, below) & group);
    if (!done) done = !multisection_narrow(lo, hi, g, j);
  }
  return S(0.5) * (lo + hi);
}

// Bytes of working memory one map needs in block_map_kernel: 40 doubles for
// reductions and scalars, then the map, its Gram and four vectors in the
// compute precision S (rounded up to 16 bytes, so global slices stay aligned).
template <typename S>
__host__ __device__ int64_t block_buffer_bytes(int64_t h, int64_t w) {
  const int64_t d = h < w ? h : w;
  const int64_t elems = h * w + d * d + 4 * d;
  return 40 * int64_t(sizeof(double)) + (elems * int64_t(sizeof(S)) + 15) / 16 * 16;
}

// One block per map (one warp for maps of min(H, W) <= 16).  Works in
// S = ExactFloat<T>: float for float32/float16/bfloat16 input (as the CPU
// core's float path), double for float64; float halves the shared memory per
// map, so twice as many maps share an SM, and runs at the full FP32 rate.
// Column means and the total energy stay in double; the map is centred and
// scaled to unit norm before the Gram, so the Gram has unit trace and no
// product can overflow or underflow S, whatever the activations' scale.
// Launch bounds: at most 80 registers, so 6 blocks of 128 threads (56x56) or
// 3 of 256 share an SM; left to itself nvcc takes 96.
template <typename T>
__global__ void __launch_bounds__(256, 3) block_map_kernel(MapBatch x, EnergyParams p, double* out, double* global_ws,
                                 double rel_tol) {
  using S = typename ExactFloat<T>::type;
  OCNNA_DYNAMIC_SHARED(double, smem);
  const int h = int(x.h), w = int(x.w), d = h < w ? h : w;
  double* red = global_ws ? reinterpret_cast<double*>(reinterpret_cast<char*>(global_ws) +
                                                      blockIdx.x * block_buffer_bytes<S>(h, w))
                          : smem;  // 32 slots for block_sum, then scalars
  S* map = reinterpret_cast<S*>(red + 40);
  S* gram = map + h * w;
  S* eig = gram + d * d;  // B e1 during the Householder steps, then the eigenvalues
  S* bx = eig + d;        // B x during the Householder steps
  S* diag = bx + d;
  S* off = diag + d;
  const int tid = threadIdx.x, nt = blockDim.x;
  int turn = 0;

  for (int64_t t = blockIdx.x; t < x.n * x.c; t += gridDim.x) {
    const int64_t i = t / x.c, c = t % x.c;
    const T* src = static_cast<const T*>(x.data) + x.offset(i, c, 0, 0);
    // Eight loads in flight per thread: `map` may live in global memory, so
    // the compiler cannot move a load above the previous store on its own.
    constexpr int kLoads = 8;
    for (int e0 = tid; e0 < h * w; e0 += kLoads * nt) {
      S r[kLoads];
#pragma unroll
      for (int u = 0; u < kLoads; ++u) {
        const int e = e0 + u * nt, y = e / w, xx = e % w;
        r[u] = e < h * w ? S(ld(src + y * x.sh + xx * x.sw)) : S(0);  // exact: S holds every T
      }
#pragma unroll
      for (int u = 0; u < kLoads; ++u)
        if (e0 + u * nt < h * w) map[e0 + u * nt] = r[u];
    }
    __syncthreads();
    double part = 0.0;
    for (int xx = tid; xx < w; xx += nt) {
      const double mu = column_mean(map + xx, h, w);
      for (int y = 0; y < h; ++y) {
        const double u = double(map[y * w + xx]) - mu;
        part += u * u;
      }
    }
    double sum1[1] = {part};
    block_sum(sum1, red, turn);
    const double total = sum1[0];
    if (!is_finite(total) || total == 0.0 || !needs_eigen(p, h, w)) {
      if (tid == 0) out[t] = is_finite(total) ? sqrt(total) : NAN;
      __syncthreads();
      continue;
    }
    const double inv_norm = 1.0 / sqrt(total);
    for (int xx = tid; xx < w; xx += nt) {  // a column's mean is read before it is overwritten
      const double mu = column_mean(map + xx, h, w);
      for (int y = 0; y < h; ++y) map[y * w + xx] = S((double(map[y * w + xx]) - mu) * inv_norm);
    }
    __syncthreads();
    // Gram of the smaller side (unit trace), one upper-triangle entry per thread
    for (int e = tid; e < d * d; e += nt) {
      const int a = e / d, b = e % d;
      if (b < a) continue;
      S s = S(0);
      if (w <= h) {
        for (int y = 0; y < h; ++y) s += map[y * w + a] * map[y * w + b];
      } else {
        for (int xx = 0; xx < w; ++xx) s += map[a * w + xx] * map[b * w + xx];
      }
      gram[a * d + b] = s;
      gram[b * d + a] = s;
    }
    __syncthreads();
    // Householder tridiagonalisation (the reflectors of tridiagonalize) with
    // one block reduction and two barriers per step.  x, row k right of the
    // diagonal, is left alone by step k, so the reflector v = x - alpha e1 is
    // read in place.  B x does not depend on alpha, so it is formed in the same
    // pass as |x|^2 and x.Bx, and then, with alpha known,
    //   w = beta B v = beta (B x - alpha B e1),  v.Bv = x.Bx - 2 alpha (Bx)_0 + alpha^2 B_00,
    // and w - h v is formed where the rank-2 update uses it.  B's column r
    // stands for its row r (B is symmetric), so a warp reads neighbouring
    // words where a row walk hits one shared-memory bank many times over; two
    // threads share each entry of B x (even and odd j) to halve its chain of
    // dependent adds.  Reductions in double.
    S* be1 = eig;  // copied: the update rewrites B's first row
    for (int k = 0; k + 2 < d; ++k) {
      const int m = d - k - 1;
      const S* xk = gram + k * d + (k + 1);
      S* b = gram + (k + 1) * d + (k + 1);  // trailing m x m block, rows d apart
      double sums[2] = {0.0, 0.0};          // |x|^2, x.Bx
      for (int base = 0; base < m; base += nt / 2) {  // same trip count in every thread
        const int r = base + (tid >> 1);
        S s = S(0);
        if (r < m)
          for (int j = tid & 1; j < m; j += 2) s += b[j * d + r] * xk[j];
        s += S(__shfl_xor_sync(0xffffffffu, s, 1));
        if (r < m && (tid & 1) == 0) {
          bx[r] = s;
          be1[r] = b[r];
          sums[0] += double(xk[r]) * double(xk[r]);
          sums[1] += double(xk[r]) * double(s);
        }
      }
      block_sum(sums, red, turn);
      const double norm2 = sums[0];
      if (tid == 0) diag[k] = gram[k * d + k];
      if (norm2 <= double(SolverLimits<S>::reduced)) {  // already reduced (SolverLimits); uniform
        if (tid == 0) off[k] = S(0);
        continue;
      }
      const S x0 = xk[0];
      const double alpha = x0 > S(0) ? -sqrt(norm2) : sqrt(norm2);
      const double beta = 1.0 / (norm2 - alpha * double(x0));
      const double vbv = sums[1] - 2.0 * alpha * double(bx[0]) + alpha * alpha * double(be1[0]);
      if (tid == 0) off[k] = S(alpha);
      const S v0 = S(double(x0) - alpha), a = S(alpha), bt = S(beta), hh = S(0.5 * beta * beta * vbv);
      // B <- B - v w'^T - w' v^T,  w' = w - h v
      for (int e = tid; e < m * m; e += nt) {
        const int r = e / m, j = e % m;
        const S vr = r == 0 ? v0 : xk[r], vj = j == 0 ? v0 : xk[j];
        const S wr = bt * (bx[r] - a * be1[r]) - hh * vr, wj = bt * (bx[j] - a * be1[j]) - hh * vj;
        b[r * d + j] -= vr * wj + wr * vj;
      }
      __syncthreads();
    }
    if (tid == 0) {
      if (d >= 2) {
        diag[d - 2] = gram[(d - 2) * d + (d - 2)];
        off[d - 2] = gram[(d - 2) * d + (d - 1)];
      }
      diag[d - 1] = gram[(d - 1) * d + (d - 1)];
      off[d - 1] = S(0);
      S lo, hi;
      gershgorin_bounds(diag, off, d, &lo, &hi);
      red[32] = double(lo);
      red[33] = double(hi);
    }
    __syncthreads();
    // every eigenvalue at once, already in descending order by index, by
    // groups of g lanes (all of the block's threads, not only d of them)
    const S lo = S(red[32]), hi = S(red[33]);
    const S tol = S(rel_tol * fmax(fabs(red[32]), fabs(red[33])));
    const int g = multisection_lanes(d, nt);
    for (int base = 0; base < d * g; base += nt) {  // same trip count in every thread
      const int k = (base + tid) / g;
      const S e = kth_largest_multisection(diag, off, d, k < d ? k : -1, g, lo, hi, tol);
      if (k < d && (tid & (g - 1)) == 0) eig[k] = e;
    }
    __syncthreads();
    if (tid == 0) out[t] = checked_energy(sqrt(kept_energy(eig, d, p) * total));
    __syncthreads();
  }
}

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
