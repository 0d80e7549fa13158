// Truncated n_components: one block (or warp) per map: Gram, Householder
// tridiagonalisation and Sturm multisection of every eigenvalue.
#pragma once

#include "loads.cuh"
#include "reduce.cuh"

namespace ocnna {
namespace cuda {
namespace {

// ------------------------------------------------------ truncated maps --
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
// The stages of block_map_kernel, one map at a time.  Every thread of the
// block calls each stage (they hold barriers); `turn` is block_sum's.

// The map into `map` (S holds every T exactly).  Eight loads in flight per
// thread: `map` may live in global memory, so the compiler cannot move a load
// above the previous store on its own.
template <typename T, typename S>
__device__ __forceinline__ void load_map(const T* src, const MapBatch& x, int h, int w, S* map) {
  const int tid = threadIdx.x, nt = blockDim.x;
  constexpr int kLoads = 8;
  for (int e0 = tid; e0 < h * w; e0 += kLoads * nt) {
    S r[kLoads];
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      const int e = e0 + u * nt, y = e / w, xx = e % w;
      r[u] = e < h * w ? S(ld(src + y * x.sh + xx * x.sw)) : S(0);
    }
#pragma unroll
    for (int u = 0; u < kLoads; ++u)
      if (e0 + u * nt < h * w) map[e0 + u * nt] = r[u];
  }
  __syncthreads();
}

// The centred sum of squares of the map (column_mean's centring), the same in
// every thread.
template <typename S>
__device__ __forceinline__ double centred_total(const S* map, int h, int w, double* red, int& turn) {
  double part = 0.0;
  for (int xx = threadIdx.x; xx < w; xx += blockDim.x) {
    const double mu = column_mean(map + xx, h, w);
    for (int y = 0; y < h; ++y) {
      const double u = double(map[y * w + xx]) - mu;
      part += u * u;
    }
  }
  double sum1[1] = {part};
  block_sum(sum1, red, turn);
  return sum1[0];
}

// The map centred and scaled to unit Frobenius norm, in place; then the Gram
// of its smaller side (unit trace), one upper-triangle entry per thread.
template <typename S>
__device__ __forceinline__ void unit_gram(S* map, int h, int w, int d, double inv_norm, S* gram) {
  const int tid = threadIdx.x, nt = blockDim.x;
  for (int xx = tid; xx < w; xx += nt) {  // a column's mean is read before it is overwritten
    const double mu = column_mean(map + xx, h, w);
    for (int y = 0; y < h; ++y) map[y * w + xx] = S((double(map[y * w + xx]) - mu) * inv_norm);
  }
  __syncthreads();
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
}

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
// dependent adds.  Reductions in double.  `be1` and `bx` are scratch of d
// entries; diag/off receive the tridiagonal (thread 0 writes them), and
// red[32], red[33] its Gershgorin bounds.
template <typename S>
__device__ __forceinline__ void householder_tridiagonal(S* gram, int d, S* be1, S* bx, S* diag, S* off, double* red,
                                                        int& turn) {
  const int tid = threadIdx.x, nt = blockDim.x;
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
}

// Every eigenvalue of the tridiagonal at once, already in descending order
// by index, by groups of g lanes (all of the block's threads, not only d of
// them), into eig; bounds from red[32], red[33].
template <typename S>
__device__ __forceinline__ void all_eigenvalues(const S* diag, const S* off, int d, const double* red,
                                                double rel_tol, S* eig) {
  const int tid = threadIdx.x, nt = blockDim.x;
  const S lo = S(red[32]), hi = S(red[33]);
  const S tol = S(rel_tol * fmax(fabs(red[32]), fabs(red[33])));
  const int g = multisection_lanes(d, nt);
  for (int base = 0; base < d * g; base += nt) {  // same trip count in every thread
    const int k = (base + tid) / g;
    const S e = kth_largest_multisection(diag, off, d, k < d ? k : -1, g, lo, hi, tol);
    if (k < d && (tid & (g - 1)) == 0) eig[k] = e;
  }
  __syncthreads();
}

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
  int turn = 0;

  for (int64_t t = blockIdx.x; t < x.n * x.c; t += gridDim.x) {
    const int64_t i = t / x.c, c = t % x.c;
    load_map(static_cast<const T*>(x.data) + x.offset(i, c, 0, 0), x, h, w, map);
    const double total = centred_total(map, h, w, red, turn);
    if (!is_finite(total) || total == 0.0 || !needs_eigen(p, h, w)) {
      if (threadIdx.x == 0) out[t] = is_finite(total) ? sqrt(total) : NAN;
      __syncthreads();
      continue;
    }
    unit_gram(map, h, w, d, 1.0 / sqrt(total), gram);
    householder_tridiagonal(gram, d, /*be1=*/eig, bx, diag, off, red, turn);  // be1 copied: the update rewrites B's first row
    all_eigenvalues(diag, off, d, red, rel_tol, eig);
    if (threadIdx.x == 0) out[t] = checked_energy(sqrt(kept_energy(eig, d, p) * total));
    __syncthreads();
  }
}

}  // namespace
}  // namespace cuda
}  // namespace ocnna
