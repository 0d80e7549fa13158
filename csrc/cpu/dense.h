// CPU-only dense kernels of the truncated path, written for SIMD: the same
// arithmetic as their portable counterparts in common/ocnna_math.h
// (centre_columns, gram_ata), laid out so every inner loop runs along
// contiguous memory in whole vector registers (kVectorBytes).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../common/ocnna_math.h"

namespace ocnna {
namespace cpu {

// Bytes of the widest vector register this build targets.  The kernels keep
// one register of lanes per vector: a wider generic vector is split by the
// compiler and, with tiles of sixteen accumulators, spilled through the stack
// (64-byte vectors under AVX2 ran slower than the SSE2 build).
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif

// Elements of S in one vector register, and n rounded up to a whole number of them.
template <typename S>
constexpr int vec_len() {
  return int(kVectorBytes / sizeof(S));
}
template <typename S>
inline int round_to_vec(int n) {
  return (n + vec_len<S>() - 1) / vec_len<S>() * vec_len<S>();
}

// Column means of the R x C row-major double map, as centre_columns in
// common/ocnna_math.h takes them (shifted by the first row, so a constant
// column gets its value back exactly and centres to exact zeros; each
// column's sum over rows 1..R-1 in order), into `means`; returns the centred
// sum of squares in double.  Loops run along rows, and the sum of squares
// keeps eight partial sums, so the arithmetic vectorises.
inline double centre_stats(const double* m, int rows, int cols, double* means) {
  std::fill(means, means + cols, 0.0);
  const double* shift = m;  // row 0
  for (int i = 1; i < rows; ++i) {
    const double* r = m + int64_t(i) * cols;
    for (int j = 0; j < cols; ++j) means[j] += r[j] - shift[j];
  }
  for (int j = 0; j < cols; ++j) {
    const double mean = shift[j] + means[j] / rows;
    means[j] = (means[j] == 0.0) ? shift[j] : mean;
  }
  constexpr int P = 8;  // partial sums of squares
  double part[P] = {};
  for (int i = 0; i < rows; ++i) {
    const double* r = m + int64_t(i) * cols;
    int j = 0;
    for (; j + P <= cols; j += P)
      for (int k = 0; k < P; ++k) {
        const double x = r[j + k] - means[j + k];
        part[k] += x * x;
      }
    for (; j < cols; ++j) {
      const double x = r[j] - means[j];
      part[0] += x * x;
    }
  }
  double total = 0.0;
  for (int k = 0; k < P; ++k) total += part[k];
  return total;
}

// A = (X - means) * unit in S, from the R x C row-major map X: unit =
// 1/||X - means|| gives A unit Frobenius norm, so its Gram has unit trace
// whatever the scale of the activations (in float, squares of values beyond
// 1e19 would overflow and below 1e-19 vanish).  A is R x C, or C x R when
// `transpose`, rows `lda` apart, columns beyond zeroed.
template <typename S>
void write_unit(const double* m, int rows, int cols, const double* means, double unit, S* a, int lda,
                bool transpose) {
  for (int i = 0; i < rows; ++i) {
    const double* r = m + int64_t(i) * cols;
    if (!transpose) {
      S* ar = a + int64_t(i) * lda;
      for (int j = 0; j < cols; ++j) ar[j] = S((r[j] - means[j]) * unit);
    } else {
      for (int j = 0; j < cols; ++j) a[int64_t(j) * lda + i] = S((r[j] - means[j]) * unit);
    }
  }
  const int arows = transpose ? cols : rows, acols = transpose ? rows : cols;
  for (int i = 0; i < arows; ++i) std::fill(a + int64_t(i) * lda + acols, a + int64_t(i + 1) * lda, S(0));
}

// write_unit for K maps at once into one interleaved A: element (r, c) of
// lane l at a[(r * lda + c) * K + l].  Lane l < live takes map m[l] with its
// means (means + l * C) and unit[l]; the other lanes, and the padding, are
// zero.  Each row of A is first computed map by map along contiguous memory
// into `row` (K * lda elements of S), then interleaved while it sits in L1,
// so A is written in memory order (interleaving map by map would touch one
// cache line per element).
template <typename S, int K>
void write_unit_lanes(const double* const* m, int rows, int cols, const double* means, const double* unit,
                      int live, S* a, int lda, bool transpose, S* row) {
  const int arows = transpose ? cols : rows, acols = transpose ? rows : cols;
  for (int l = 0; l < K; ++l) std::fill(row + int64_t(l) * lda, row + int64_t(l + 1) * lda, S(0));
  for (int i = 0; i < arows; ++i) {
    for (int l = 0; l < live; ++l) {
      S* t = row + int64_t(l) * lda;
      const double* ml = m[l];
      const double* mu = means + int64_t(l) * cols;
      const double u = unit[l];
      if (!transpose) {
        const double* r = ml + int64_t(i) * cols;
        for (int j = 0; j < acols; ++j) t[j] = S((r[j] - mu[j]) * u);
      } else {
        for (int j = 0; j < acols; ++j) t[j] = S((ml[int64_t(j) * cols + i] - mu[i]) * u);
      }
    }
    S* ar = a + int64_t(i) * lda * K;
    for (int j = 0; j < lda; ++j)
      for (int l = 0; l < K; ++l) ar[int64_t(j) * K + l] = row[int64_t(l) * lda + j];
  }
}

// Lower triangles of G_l = A_l^T A_l for K matrices A_l (R x D) at
// once, one per SIMD lane: A element (r, c) of lane l at a[(r * lda + c) * K
// + l] with lda = D rounded up to 4 (padding zero), G element (i, j), j <= i,
// at g[(i * D + j) * K + l], as tridiagonalize_lanes reads it.  Register tiles
// of 4 x 4 elements of G (sixteen accumulators): per row of A, eight vector
// loads feed sixteen FMAs, and the four columns of A a tile row keeps
// re-reading stay in L1.
template <typename S, int K>
void gram_lanes(const S* a, int rows, int d, int lda, S* g) {
  typedef S V __attribute__((vector_size(sizeof(S) * K)));
  auto load = [](const S* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  };
  const V zero = V{} * S(0);
  for (int i0 = 0; i0 < d; i0 += 4) {
    for (int j0 = 0; j0 <= i0; j0 += 4) {
      V acc[4][4];
      for (int ii = 0; ii < 4; ++ii)
        for (int jj = 0; jj < 4; ++jj) acc[ii][jj] = zero;
      for (int r = 0; r < rows; ++r) {
        const S* ar = a + int64_t(r) * lda * K;
        V ai[4], aj[4];
        for (int t = 0; t < 4; ++t) {
          ai[t] = load(ar + (i0 + t) * K);
          aj[t] = load(ar + (j0 + t) * K);
        }
        for (int ii = 0; ii < 4; ++ii)
          for (int jj = 0; jj < 4; ++jj) acc[ii][jj] += ai[ii] * aj[jj];
      }
      for (int ii = 0; ii < 4 && i0 + ii < d; ++ii)
        for (int jj = 0; jj < 4 && j0 + jj <= i0 + ii; ++jj) {
          std::memcpy(g + (int64_t(i0 + ii) * d + j0 + jj) * K, &acc[ii][jj], sizeof(V));
        }
    }
  }
}

// G = A^T A for an R x D matrix A stored row-major with row stride
// lda = round_to_vec<S>(D) (columns D..lda zero).  G is D x D with row stride
// ld >= lda; columns D..ld come out zero, as tridiagonalize's padded loops
// need.  The upper part is computed in register tiles of 4 rows x 2 vectors
// (eight accumulators, each element of A loaded once per tile), the rest
// mirrored.  Every G[i][j] is the same in-order sum over rows whichever
// triangle computes it, so G is exactly symmetric.
template <typename S>
void gram_blocked(const S* a, int rows, int d, int lda, S* g, int ld) {
  constexpr int VL = vec_len<S>();
  typedef S V __attribute__((vector_size(kVectorBytes)));
  const V zero = V{} * S(0);
  auto load = [](const S* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  };
  auto store = [](S* p, V v) { std::memcpy(p, &v, sizeof v); };
  for (int i0 = 0; i0 < d; i0 += 4) {
    const int ni = std::min(4, d - i0);
    for (int j0 = i0 / VL * VL; j0 < lda; j0 += 2 * VL) {
      const bool two = j0 + VL < lda;
      V c00 = zero, c01 = zero, c10 = zero, c11 = zero, c20 = zero, c21 = zero, c30 = zero, c31 = zero;
      if (two) {
        for (int r = 0; r < rows; ++r) {
          const S* ar = a + int64_t(r) * lda;
          const V x0 = load(ar + j0), x1 = load(ar + j0 + VL);
          const V b0 = zero + ar[i0], b1 = zero + ar[i0 + 1], b2 = zero + ar[i0 + 2], b3 = zero + ar[i0 + 3];
          c00 += b0 * x0;
          c01 += b0 * x1;
          c10 += b1 * x0;
          c11 += b1 * x1;
          c20 += b2 * x0;
          c21 += b2 * x1;
          c30 += b3 * x0;
          c31 += b3 * x1;
        }
      } else {
        for (int r = 0; r < rows; ++r) {
          const S* ar = a + int64_t(r) * lda;
          const V x0 = load(ar + j0);
          c00 += (zero + ar[i0]) * x0;
          c10 += (zero + ar[i0 + 1]) * x0;
          c20 += (zero + ar[i0 + 2]) * x0;
          c30 += (zero + ar[i0 + 3]) * x0;
        }
      }
      const V c0[4] = {c00, c10, c20, c30}, c1[4] = {c01, c11, c21, c31};
      for (int ii = 0; ii < ni; ++ii) {
        S* gi = g + int64_t(i0 + ii) * ld;
        store(gi + j0, c0[ii]);
        if (two) store(gi + j0 + VL, c1[ii]);
      }
    }
  }
  for (int i = 0; i < d; ++i) {
    S* gi = g + int64_t(i) * ld;
    const int done = i / 4 * 4 / VL * VL;  // first column the tiles wrote for row i
    for (int j = 0; j < done; ++j) gi[j] = g[int64_t(j) * ld + i];
    std::fill(gi + lda, gi + ld, S(0));
  }
}

// Householder tridiagonalisation of K symmetric d x d matrices at once, one
// per SIMD lane: element (i, j) of matrix l at g[(i * d + j) * K + l], only
// the lower triangle (j <= i) read, and destroyed.  The same reflectors as
// tridiagonalize (common/ocnna_math.h), but since all K matrices take the
// same steps every operation is one vector operation across them, whatever
// the size of the trailing block; with no need for contiguous rows, only one
// triangle is kept, half the flops of the full-storage version.  The K
// triangles outgrow L1 from d ~ 40, so each step makes one pass over the
// trailing block: the rank-2 update of step k and the product B v of step
// k + 1 share it (the column the next reflector comes from is updated first).
// diag[r * K + l] and off[r * K + l] receive the tridiagonal, interleaved as
// tridiagonal_eigenvalues_lanes wants it.  `work` holds 4 * d * K elements.
template <typename S, int K>
void tridiagonalize_lanes(S* g, int d, S* diag, S* off, S* work) {
  typedef S V __attribute__((vector_size(sizeof(S) * K)));
  typedef decltype(V{} < V{}) M;
  const V zero = V{} * S(0);
  auto at = [g, d](int i, int j) { return g + (int64_t(i) * d + j) * K; };
  auto load = [](const S* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  };
  auto store = [](S* p, V v) { std::memcpy(p, &v, sizeof v); };
  S* v = work;             // reflector of this step (index 0 = first row of its block)
  S* w = work + d * K;     // B v, then beta B v - h v
  S* vn = w + d * K;       // the next step's v and B v
  S* wn = vn + d * K;
  // Reflector from column `col`, rows col+1 .. d-1 (x), into vb: v = x - alpha e1.
  auto reflector = [&](int col, S* vb, V& beta) {
    const int m = d - col - 1;
    V norm2 = zero;
    for (int i = 0; i < m; ++i) {
      const V x = load(at(col + 1 + i, col));
      store(vb + i * K, x);
      norm2 += x * x;
    }
    store(diag + col * K, load(at(col, col)));
    const V x0 = load(vb);
    V root;
    for (int l = 0; l < K; ++l) root[l] = std::sqrt(norm2[l]);
    const M nz = norm2 > zero + SolverLimits<S>::reduced;  // else already reduced (SolverLimits)
    const V alpha = x0 > zero ? -root : root;
    store(off + col * K, nz ? alpha : zero);
    const V vtv = S(2) * (norm2 - alpha * x0);
    beta = nz ? S(2) / (nz ? vtv : zero + S(1)) : zero;  // 0: nothing to reduce, the update is a no-op
    store(vb, x0 - alpha);
  };
  if (d >= 3) {
    V beta;
    reflector(0, v, beta);
    // B v for step 0 (block rows/cols 1 .. d-1), lower triangle: row i gives
    // w_i += B_ij v_j and w_j += B_ij v_i
    const int m0 = d - 1;
    for (int i = 0; i < m0; ++i) store(w + i * K, zero);
    for (int i = 0; i < m0; ++i) {
      const S* bi = at(1 + i, 1);
      const V vi = load(v + i * K);
      V si = load(bi + i * K) * vi;
      for (int j = 0; j < i; ++j) {
        const V bij = load(bi + j * K);
        si += bij * load(v + j * K);
        store(w + j * K, load(w + j * K) + bij * vi);
      }
      store(w + i * K, load(w + i * K) + si);
    }
    for (int k = 0; k + 2 < d; ++k) {
      const int m = d - k - 1, b0 = k + 1;  // this step's block: rows/cols b0 .. d-1
      // w = beta B v - h v, h = beta (v . beta B v) / 2
      V vw = zero;
      for (int i = 0; i < m; ++i) {
        const V wi = beta * load(w + i * K);
        store(w + i * K, wi);
        vw += load(v + i * K) * wi;
      }
      const V h = S(0.5) * beta * vw;
      for (int i = 0; i < m; ++i) store(w + i * K, load(w + i * K) - h * load(v + i * K));
      const V v0 = load(v), w0 = load(w);
      if (k + 3 < d) {
        // column b0 first: the next reflector comes from it
        for (int i = 0; i < m; ++i) {
          S* p = at(b0 + i, b0);
          store(p, load(p) - (load(v + i * K) * w0 + load(w + i * K) * v0));
        }
        V beta_n;
        reflector(b0, vn, beta_n);
        // one pass over rows/cols b0+1 .. d-1: B -= v w^T + w v^T, and the
        // next step's B v from the updated values
        for (int i = 1; i < m; ++i) store(wn + (i - 1) * K, zero);
        for (int i = 1; i < m; ++i) {
          S* bi = at(b0 + i, b0);
          const V vi = load(v + i * K), wi = load(w + i * K), vni = load(vn + (i - 1) * K);
          const V bii = load(bi + i * K) - (vi * wi + wi * vi);
          store(bi + i * K, bii);
          V si = bii * vni;
          for (int j = 1; j < i; ++j) {
            const V bij = load(bi + j * K) - (vi * load(w + j * K) + wi * load(v + j * K));
            store(bi + j * K, bij);
            si += bij * load(vn + (j - 1) * K);
            store(wn + (j - 1) * K, load(wn + (j - 1) * K) + bij * vni);
          }
          store(wn + (i - 1) * K, load(wn + (i - 1) * K) + si);
        }
        std::swap(v, vn);
        std::swap(w, wn);
        beta = beta_n;
      } else {
        // last step: the plain update of the 2 x 2 block left
        for (int i = 0; i < m; ++i) {
          S* bi = at(b0 + i, b0);
          const V vi = load(v + i * K), wi = load(w + i * K);
          for (int j = 0; j <= i; ++j)
            store(bi + j * K, load(bi + j * K) - (vi * load(w + j * K) + wi * load(v + j * K)));
        }
      }
    }
  }
  if (d >= 2) {
    store(diag + (d - 2) * K, load(at(d - 2, d - 2)));
    store(off + (d - 2) * K, load(at(d - 1, d - 2)));
  }
  store(diag + (d - 1) * K, load(at(d - 1, d - 1)));
  store(off + (d - 1) * K, zero);
}

}  // namespace cpu
}  // namespace ocnna
