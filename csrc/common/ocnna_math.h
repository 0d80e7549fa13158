// The OCNNA scoring math (docs/scoring.md §2 and §3), written once for the CPU
// and the CUDA cores.  Everything here is a plain function of raw buffers so
// that it compiles as host code (g++) and as device code (nvcc) unchanged.
//
//   per-map energy  F = sqrt(sum of the q largest eigenvalues of the Gram of
//                         the column-centred map)      (PCA + Frobenius norm)
//   per-filter score = std(F) / mean(F) over images, accumulated with the
//                      Welford / Chan (count, mean, M2) merge.
//
// What is shared and what is not.  map_energy and map_rank are the
// executable reference of one map: plain loops, used by the CPU core's scalar
// path and compared against by the tests (tests/native/ runs the CUDA kernels
// beside them).  The statistics, the component rule and the merge
// (chan_merge, batch_summary, kept_energy, rank_from_eigenvalues,
// checked_energy) and the eigenvalue bracketing (sturm_count_below,
// multisection_*, gershgorin_bounds, tridiagonal_kth_largest) are used as they
// are by both cores.  Three fast paths carry their own form of a stage and
// must agree with the function named here:
//   cpu/dense.h          centre_columns and gram_ata, laid out for SIMD;
//   cpu/ql_lanes.h       tridiagonal_eigenvalues' QL, 8 or 16 maps per lane set;
//   cuda/kernels/block_map.cuh  block_map_kernel: column_mean, the Gram and
//                        tridiagonalize spread over a thread block.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define OCNNA_HD __host__ __device__ __forceinline__
#else
#define OCNNA_HD inline
#endif

namespace ocnna {

// Element types the cores read.  The numbers are part of the binding ABI.
enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// How many principal components are kept (docs/scoring.md §2, step 3).
//   kAll:   n_components=None, keep everything -> F = ||Xc||_F, no eigen-solve
//   kCount: n_components=int q
//   kRatio: n_components=float tau, smallest q with explained ratio > tau
//   kRank:  not an energy: the numerical rank of the (uncentred) map, HRank's
//           per-map statistic (Lin et al., CVPR 2020), streamed through the
//           same accumulators; see map_rank
enum Mode : int { kAll = 0, kCount = 1, kRatio = 2, kRank = 3 };

struct EnergyParams {
  int mode;
  int q;       // kCount only
  double tau;  // kRatio only
};

// ---------------------------------------------------------------- loading --

OCNNA_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// IEEE binary16 -> float, exact for every input (normals, subnormals, inf, nan).
OCNNA_HD float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t expo = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (expo == 0) {
    // zero or subnormal: mant * 2^-24, exactly representable in float
    const float mag = float(mant) * 5.9604644775390625e-8f;
    return sign ? -mag : mag;
  }
  if (expo == 31) return bits_to_float(sign | 0x7f800000u | (mant << 13));
  return bits_to_float(sign | ((expo + 112u) << 23) | (mant << 13));
}

// bfloat16 is the top half of a float.
OCNNA_HD float bf16_to_float(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }

OCNNA_HD bool is_finite(double v) { return v - v == 0.0; }  // false for inf and nan

// Overloads that keep float arithmetic in float on host and device alike.
OCNNA_HD float sqrt_of(float v) { return sqrtf(v); }
OCNNA_HD double sqrt_of(double v) { return sqrt(v); }
// Per-precision constants of the eigen-solvers.
//   negligible: relative size below which an off-diagonal counts as zero in QL;
//   tiny_pivot: stand-in for a zero pivot in a Sturm count, tiny, yet its
//               reciprocal times an off-diagonal square (at most 1 for a
//               unit-trace Gram) stays finite;
//   reduced:    |x|^2 of a Householder column at or below which the column
//               counts as already reduced (its entries are dropped).  The
//               Gram has unit trace, so dropping entries of at most
//               `negligible` moves each eigenvalue by at most that much
//               (Weyl), as QL's own deflation does.  Without it, a column of
//               denormal-sized entries (sparse post-ReLU maps make them)
//               gives |x|^2 ~ 1e-40 in float, and the reflector's
//               1 / (|x|^2 - alpha x0) overflows to inf, then NaN.
template <typename S>
struct SolverLimits;
template <>
struct SolverLimits<float> {
  static constexpr float negligible = 6e-8f, tiny_pivot = 1e-30f, reduced = 6e-8f * 6e-8f;
};
template <>
struct SolverLimits<double> {
  static constexpr double negligible = 1e-16, tiny_pivot = 1e-300, reduced = 1e-32;
};

// QL's deflation test for the off-diagonal e between diagonals a and b of a
// unit-trace tridiagonal: negligible next to its neighbours, or next to the
// matrix (norm about 1).  The absolute part matters on exactly-zero
// structure, where a and b are themselves ~0 and the relative test alone
// never deflates tiny rounding noise (60 sweeps, then a spurious failure).
template <typename S>
OCNNA_HD bool negligible_off(S e, S a, S b) {
  const S lim = SolverLimits<S>::negligible;
  const S ae = e < S(0) ? -e : e;
  return ae <= lim * ((a < S(0) ? -a : a) + (b < S(0) ? -b : b)) || ae <= lim;
}

// Energy written for a map whose values were finite but whose eigen-solve
// failed: negative, so it can never pass for an energy, and finite, so it is
// never mistaken for a non-finite input.  Such a failure is our bug, reported
// as an internal error (the status code adds kInternalFlag to the channel).
constexpr double kSolveFailed = -1.0;
constexpr long long kInternalFlag = 1ll << 40;
OCNNA_HD double checked_energy(double f) { return is_finite(f) && f >= 0.0 ? f : kSolveFailed; }

// ------------------------------------------------------------ statistics --

// Chan et al. parallel merge of (count, mean, M2) summaries: exact in real
// arithmetic, so the result does not depend on how images were batched.
OCNNA_HD void chan_merge(double& n_a, double& mean_a, double& m2_a, double n_b, double mean_b,
                         double m2_b) {
  if (n_b <= 0.0) return;
  if (n_a <= 0.0) {
    n_a = n_b;
    mean_a = mean_b;
    m2_a = m2_b;
    return;
  }
  const double n = n_a + n_b;
  const double delta = mean_b - mean_a;
  mean_a += delta * (n_b / n);
  m2_a += m2_b + delta * delta * (n_a / n) * n_b;
  n_a = n;
}

// Two-pass (mean, M2) of n values spaced `stride` apart: the summary of one
// batch for one channel, merged afterwards with chan_merge.
OCNNA_HD void batch_summary(const double* f, int64_t n, int64_t stride, double& mean,
                            double& m2) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += f[i * stride];
  mean = s / double(n);
  double q = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = f[i * stride] - mean;
    q += d * d;
  }
  m2 = q;
}

// ------------------------------------------------------ per-map energy ----

// Mean of a column of `rows` values `stride` apart, summed in double after a
// shift by the first value, so that a constant column gets its value back
// exactly (and centres to exact zeros: docs/scoring.md §2 requires F == 0, not 1e-17, for
// zero-variance maps).
template <typename S>
OCNNA_HD double column_mean(const S* col, int rows, int64_t stride) {
  const double shift = double(col[0]);
  double s = 0.0;
  for (int i = 1; i < rows; ++i) s += double(col[i * stride]) - shift;
  return (s == 0.0) ? shift : shift + s / rows;
}

// Centres each column of an R x D row-major map in place.
OCNNA_HD void centre_columns(double* m, int rows, int cols) {
  for (int j = 0; j < cols; ++j) {
    const double mean = column_mean(m + j, rows, cols);
    for (int i = 0; i < rows; ++i) m[int64_t(i) * cols + j] -= mean;
  }
}

OCNNA_HD double sum_squares(const double* m, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += m[i] * m[i];
  return s;
}

// Centred sum of squares of one column from sums shifted by its first value,
// s1 = sum(x - x0) and s2 = sum((x - x0)^2) over `rows` values.  One pass over
// the data; the shift keeps the cancellation small and makes a constant
// column give exactly 0.
OCNNA_HD double centred_ss_from_shifted(double s1, double s2, double rows) {
  const double v = s2 - s1 * (s1 / rows);
  return v > 0.0 ? v : 0.0;
}

// Upper triangle of G = A^T A for an R x D row-major A (G is D x D), then
// mirrored.  Four rows at a time so each pass over G does four rank-1 updates.
OCNNA_HD void gram_ata(const double* a, int rows, int d, double* g) {
  for (int64_t i = 0; i < int64_t(d) * d; ++i) g[i] = 0.0;
  int r = 0;
  for (; r + 4 <= rows; r += 4) {
    const double* r0 = a + int64_t(r) * d;
    const double* r1 = r0 + d;
    const double* r2 = r1 + d;
    const double* r3 = r2 + d;
    for (int i = 0; i < d; ++i) {
      const double a0 = r0[i], a1 = r1[i], a2 = r2[i], a3 = r3[i];
      double* gi = g + int64_t(i) * d;
      for (int j = i; j < d; ++j) gi[j] += a0 * r0[j] + a1 * r1[j] + a2 * r2[j] + a3 * r3[j];
    }
  }
  for (; r < rows; ++r) {
    const double* r0 = a + int64_t(r) * d;
    for (int i = 0; i < d; ++i) {
      const double a0 = r0[i];
      double* gi = g + int64_t(i) * d;
      for (int j = i; j < d; ++j) gi[j] += a0 * r0[j];
    }
  }
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < i; ++j) g[int64_t(i) * d + j] = g[int64_t(j) * d + i];
}

// Row padding that lets tridiagonalize run every inner loop to a whole number
// of SIMD vectors (no scalar remainder, which dominated at these sizes).
template <typename S>
OCNNA_HD int simd_pad() {
  return int(64 / sizeof(S));
}
template <typename S>
OCNNA_HD int padded_ld(int d) {
  return d + simd_pad<S>();
}

// Householder reduction of the symmetric d x d matrix `g` (full storage,
// rows `ld` apart, destroyed) to a tridiagonal with diagonal `diag[0..d)` and
// off-diagonal `off[0..d-1)`.  Eigenvalues only, so the reflectors are not
// kept.  Every inner loop is an axpy over a contiguous row (symmetry lets rows
// stand in for columns), so compilers vectorise it without reassociating any
// sum.  With ld >= padded_ld<S>(d) and columns d..ld zero, the loops run to a
// whole number of vectors; the padding stays zero.  (Keeping only one
// triangle halves the flops but measured slower at these sizes.)  `work`
// holds 2*ld elements.
template <typename S>
OCNNA_HD void tridiagonalize(S* g, int d, S* diag, S* off, S* work, int ld = 0) {
  const bool padded = ld >= padded_ld<S>(d);
  if (ld < d) ld = d;
  const int vl = simd_pad<S>();
  S* v = work;
  S* w = work + ld;
  for (int k = 0; k + 2 < d; ++k) {
    const int m = d - k - 1;  // size of the trailing block B = g[k+1.., k+1..]
    const int mp = padded ? (m + vl - 1) / vl * vl : m;  // loop length, zeros past m
    const S* x = g + int64_t(k) * ld + (k + 1);  // row k right of the diagonal
    S norm2 = 0;
    for (int i = 0; i < m; ++i) {
      v[i] = x[i];
      norm2 += x[i] * x[i];
    }
    for (int i = m; i < mp; ++i) v[i] = S(0);
    diag[k] = g[int64_t(k) * ld + k];
    if (norm2 <= SolverLimits<S>::reduced) {  // already reduced (see SolverLimits)
      off[k] = S(0);
      continue;
    }
    const S alpha = (v[0] > S(0)) ? -sqrt_of(norm2) : sqrt_of(norm2);
    off[k] = alpha;
    // reflector H = I - beta v v^T with v = x - alpha e1
    const S vtv = S(2) * (norm2 - alpha * v[0]);
    v[0] -= alpha;
    const S beta = S(2) / vtv;
    // w = beta B v, accumulated four rows at a time (B symmetric)
    for (int i = 0; i < mp; ++i) w[i] = S(0);
    int j = 0;
    for (; j + 4 <= m; j += 4) {
      const S* b0 = g + int64_t(k + 1 + j) * ld + (k + 1);
      const S* b1 = b0 + ld;
      const S* b2 = b1 + ld;
      const S* b3 = b2 + ld;
      const S v0 = v[j], v1 = v[j + 1], v2 = v[j + 2], v3 = v[j + 3];
      for (int i = 0; i < mp; ++i) w[i] += b0[i] * v0 + b1[i] * v1 + b2[i] * v2 + b3[i] * v3;
    }
    for (; j < m; ++j) {
      const S* bj = g + int64_t(k + 1 + j) * ld + (k + 1);
      const S vj = v[j];
      for (int i = 0; i < mp; ++i) w[i] += bj[i] * vj;
    }
    S vw = 0;
    for (int i = 0; i < m; ++i) {
      w[i] *= beta;
      vw += v[i] * w[i];
    }
    const S h = S(0.5) * beta * vw;
    for (int i = 0; i < m; ++i) w[i] -= h * v[i];
    for (int i = m; i < mp; ++i) w[i] = S(0);
    // B <- H B H = B - v w^T - w v^T
    for (int i = 0; i < m; ++i) {
      S* bi = g + int64_t(k + 1 + i) * ld + (k + 1);
      const S vi = v[i], wi = w[i];
      for (int jj = 0; jj < mp; ++jj) bi[jj] -= vi * w[jj] + wi * v[jj];
    }
  }
  if (d >= 2) {
    diag[d - 2] = g[int64_t(d - 2) * ld + (d - 2)];
    off[d - 2] = g[int64_t(d - 2) * ld + (d - 1)];
  }
  diag[d - 1] = g[int64_t(d - 1) * ld + (d - 1)];
}

// Eigenvalues of a symmetric tridiagonal matrix by the implicit QL method with
// Wilkinson-type shifts (Bowdler, Martin, Reinsch, Wilkinson 1968).  Entries
// must be O(1) (the caller scales by the trace): plain sqrt(a^2 + b^2) then
// cannot overflow, and it is much cheaper than hypot.  On return
// `diag` holds the eigenvalues, unsorted; `off` is destroyed.  Returns false if
// an eigenvalue did not converge (only possible for non-finite input, which the
// caller has already excluded).
OCNNA_HD bool tridiagonal_eigenvalues(double* diag, double* off, int d) {
  if (d <= 1) return true;
  off[d - 1] = 0.0;
  for (int l = 0; l < d; ++l) {
    for (int iter = 0;; ++iter) {
      // find the first negligible off-diagonal at or after l: it splits the matrix
      int m = l;
      for (; m < d - 1; ++m) {
        if (negligible_off(off[m], diag[m], diag[m + 1])) break;
      }
      if (m == l) break;  // diag[l] has converged
      if (iter == 60) return false;
      // shift from the leading 2x2 block of the unreduced part
      double g = (diag[l + 1] - diag[l]) / (2.0 * off[l]);
      double r = sqrt(g * g + 1.0);
      g = diag[m] - diag[l] + off[l] / (g + (g >= 0.0 ? r : -r));
      double s = 1.0, c = 1.0, p = 0.0;
      int i = m - 1;
      bool deflated = false;
      for (; i >= l; --i) {
        // one Givens rotation chasing the bulge upwards
        const double f = s * off[i];
        const double b = c * off[i];
        r = sqrt(f * f + g * g);
        off[i + 1] = r;
        if (r == 0.0) {  // underflow: the rotation decoupled the matrix
          diag[i + 1] -= p;
          off[m] = 0.0;
          deflated = true;
          break;
        }
        const double inv_r = 1.0 / r;  // one division on the critical path, not two
        s = f * inv_r;
        c = g * inv_r;
        g = diag[i + 1] - p;
        r = (diag[i] - g) * s + 2.0 * c * b;
        p = s * r;
        diag[i + 1] = g + p;
        g = c * r - b;
      }
      if (deflated) continue;
      diag[l] -= p;
      off[l] = g;
      off[m] = 0.0;
    }
  }
  return true;
}

// Number of eigenvalues of the symmetric tridiagonal (diag, off) that are
// strictly less than x (Sturm sequence count via the LDL^T pivots), in the
// precision S of the tridiagonal (float for inputs of float precision on the
// GPU, as the CPU's float QL).
template <typename S>
OCNNA_HD int sturm_count_below(const S* diag, const S* off, int d, S x) {
  int count = 0;
  S q = diag[0] - x;
  if (q < S(0)) ++count;
  for (int i = 1; i < d; ++i) {
    // a zero pivot is nudged off zero; that only moves the count at x itself
    const S prev = (q == S(0)) ? SolverLimits<S>::tiny_pivot : q;
    q = diag[i] - x - off[i - 1] * off[i - 1] / prev;
    if (q < S(0)) ++count;
  }
  return count;
}

// Multisection for one eigenvalue of a symmetric tridiagonal: g points split
// [lo, hi] into g + 1 equal parts; point i is multisection_point(lo, hi, g, i).
// Given j, how many of them lie at or below the eigenvalue (Sturm counts),
// multisection_narrow keeps the part that holds it, and returns false when
// the interval no longer shrinks (machine resolution).  g = 1 is bisection.
// The CUDA core counts the g points on g lanes at once; the host loop below
// counts them one after another, with the same arithmetic.
template <typename S>
OCNNA_HD S multisection_point(S lo, S hi, int g, int i) {
  return lo + (hi - lo) / S(g + 1) * S(i + 1);
}

template <typename S>
OCNNA_HD bool multisection_narrow(S& lo, S& hi, int g, int j) {
  const S nlo = j == 0 ? lo : multisection_point(lo, hi, g, j - 1);
  const S nhi = j == g ? hi : multisection_point(lo, hi, g, j);
  const bool moved = nlo != lo || nhi != hi;
  lo = nlo;
  hi = nhi;
  return moved;
}

// The k-th largest eigenvalue (k = 0 is the largest) of a symmetric
// tridiagonal, by multisection with g points per step on [lo, hi] (a
// Gershgorin interval), to an absolute width of `tol`.
template <typename S>
OCNNA_HD S tridiagonal_kth_largest(const S* diag, const S* off, int d, int k, S lo, S hi, S tol, int g = 1) {
  const int target = d - 1 - k;  // eigenvalue index counted from the smallest
  for (int it = 0; it < 128 && hi - lo > tol; ++it) {
    int j = 0;
    for (int i = 0; i < g; ++i) j += sturm_count_below(diag, off, d, multisection_point(lo, hi, g, i)) <= target;
    if (!multisection_narrow(lo, hi, g, j)) break;
  }
  return S(0.5) * (lo + hi);
}

// Gershgorin interval [lo, hi] holding every eigenvalue of the tridiagonal.
template <typename S>
OCNNA_HD void gershgorin_bounds(const S* diag, const S* off, int d, S* lo, S* hi) {
  S a = diag[0], b = diag[0];
  for (int i = 0; i < d; ++i) {
    const S left = i > 0 ? off[i - 1] : S(0), right = i + 1 < d ? off[i] : S(0);
    const S r = (left < S(0) ? -left : left) + (right < S(0) ? -right : right);
    a = diag[i] - r < a ? diag[i] - r : a;
    b = diag[i] + r > b ? diag[i] + r : b;
  }
  *lo = a;
  *hi = b;
}

// In-place descending sort; d is at most a few hundred and this runs once per
// map after O(d^3) work, so insertion sort is enough (and works on device).
OCNNA_HD void sort_descending(double* x, int n) {
  for (int i = 1; i < n; ++i) {
    const double v = x[i];
    int j = i - 1;
    while (j >= 0 && x[j] < v) {
      x[j + 1] = x[j];
      --j;
    }
    x[j + 1] = v;
  }
}

// Energy kept by the first q components, given eigenvalues sorted descending
// (negative rounding noise clipped to zero), summed in double.  docs/scoring.md §2, step 3: for
// kRatio the smallest q whose cumulative explained ratio is strictly greater
// than tau.
template <typename S>
OCNNA_HD double kept_energy(const S* eig, int d, const EnergyParams& p) {
  double total = 0.0;
  for (int i = 0; i < d; ++i) total += eig[i] > S(0) ? double(eig[i]) : 0.0;
  if (total == 0.0) return 0.0;
  double cum = 0.0;
  if (p.mode == kCount) {
    const int q = p.q < d ? p.q : d;
    for (int i = 0; i < q; ++i) cum += eig[i] > S(0) ? double(eig[i]) : 0.0;
    return cum;
  }
  for (int i = 0; i < d; ++i) {
    cum += eig[i] > S(0) ? double(eig[i]) : 0.0;
    if (cum / total > p.tau) return cum;
  }
  return cum;
}

// Rank tolerance of kRank: a singular value counts when it exceeds
// max(H, W) * eps * the largest, eps of float32 - what torch.linalg.matrix_rank
// applies to a float32 map, as HRank's reference code calls it.
constexpr double kRankEps = 1.1920928955078125e-07;

// Number of eigenvalues (sorted descending, of the unit-trace Gram, so
// squares of singular values) above the kRank tolerance of an h x w map.
OCNNA_HD int rank_from_eigenvalues(const double* eig, int d, int h, int w) {
  const double t = double(h > w ? h : w) * kRankEps;
  const double thr = t * t * eig[0];  // (t sigma_max)^2
  int r = 0;
  for (int i = 0; i < d; ++i) r += eig[i] > thr;
  return r;
}

// Does this map need an eigen-solve at all?  Keeping min(H, W) or more
// components keeps all the energy, and a 1-wide Gram has one eigenvalue.
OCNNA_HD bool needs_eigen(const EnergyParams& p, int h, int w) {
  const int d = h < w ? h : w;
  if (d <= 1 || p.mode == kAll) return false;  // kRank: a non-zero 1-wide map has rank 1
  if (p.mode == kCount && p.q >= d) return false;
  return true;
}

// Eigenvalues, sorted descending, of the unit-trace Gram of the smaller side
// of an h x w row-major map with sum of squares `total` > 0 (d = min(h, w)
// of them, written to scratch + d*d; returns that pointer, or nullptr if QL
// failed).  `map` is read only.  The Gram is A^T A with A = map (W <= H) or
// A = map^T (W > H), since X X^T = (X^T)^T X^T; unit trace leaves eigenvalue
// ratios alone and keeps QL far from overflow and underflow.
OCNNA_HD double* unit_gram_eigenvalues(const double* map, int h, int w, double total, double* scratch) {
  const int d = h < w ? h : w;
  double* gram = scratch;
  double* a = gram + int64_t(d) * d;
  if (w <= h) {
    for (int64_t e = 0; e < int64_t(h) * w; ++e) a[e] = map[e];
    gram_ata(a, h, w, gram);
  } else {
    for (int i = 0; i < h; ++i)
      for (int j = 0; j < w; ++j) a[int64_t(j) * h + i] = map[int64_t(i) * w + j];
    gram_ata(a, w, h, gram);
  }
  const double inv = 1.0 / total;
  for (int64_t i = 0; i < int64_t(d) * d; ++i) gram[i] *= inv;
  double* diag = a;  // the copy of the map is no longer needed
  double* off = a + d;
  tridiagonalize(gram, d, diag, off, a + 2 * d);
  if (!tridiagonal_eigenvalues(diag, off, d)) return nullptr;
  sort_descending(diag, d);
  return diag;
}

// F for one h x w map loaded row-major into `map` (destroyed), all in double:
// the per-map math in one function.  The CPU core runs the same steps on
// groups of maps (csrc/cpu/), the CUDA core on a block per map
// (csrc/cuda/kernels/); tests/native/ checks those kernels against this.
// `scratch` holds h*w + d*d + 4*d doubles, d = min(h, w).  NaN for a map with
// a non-finite value, kSolveFailed if the eigen-solve fails.
OCNNA_HD double map_energy(double* map, int h, int w, const EnergyParams& p, double* scratch) {
  centre_columns(map, h, w);
  const double total = sum_squares(map, int64_t(h) * w);
  if (!is_finite(total)) return NAN;
  if (total == 0.0 || !needs_eigen(p, h, w)) return sqrt(total);
  const double* eig = unit_gram_eigenvalues(map, h, w, total, scratch);
  if (eig == nullptr) return kSolveFailed;
  return checked_energy(sqrt(kept_energy(eig, h < w ? h : w, p) * total));
}

// HRank's per-map statistic for one h x w map loaded row-major into `map`
// (destroyed): the number of singular values above max(h, w) * kRankEps times
// the largest (rank_from_eigenvalues), from the eigenvalues of the unit-trace
// Gram of the map as it is (not centred), all in double: the Gram's squared
// tolerance, about 1e-11 of the largest eigenvalue at these sizes, stays far
// above double rounding.  0 for an all-zero map, -1 (kSolveFailed) if QL
// fails, NaN for non-finite input.  `scratch` as for map_energy.
OCNNA_HD double map_rank(double* map, int h, int w, double* scratch) {
  const double total = sum_squares(map, int64_t(h) * w);
  if (!is_finite(total)) return NAN;
  if (total == 0.0) return 0.0;
  const int d = h < w ? h : w;
  if (d == 1) return 1.0;
  const double* eig = unit_gram_eigenvalues(map, h, w, total, scratch);
  if (eig == nullptr) return kSolveFailed;
  return double(rank_from_eigenvalues(eig, d, h, w));
}

}  // namespace ocnna
