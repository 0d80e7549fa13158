// CPU-only dense kernels of the truncated path, written for SIMD: the same
// arithmetic as their portable counterparts in common/ocnna_math.h
// (centre_columns, gram_ata), laid out so every inner loop runs along
// contiguous memory in whole 64-byte vectors.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace ocnna {
namespace cpu {

// Elements of S in one 64-byte vector, and n rounded up to a whole number of them.
template <typename S>
constexpr int vec_len() {
  return int(64 / sizeof(S));
}
template <typename S>
inline int round_to_vec(int n) {
  return (n + vec_len<S>() - 1) / vec_len<S>() * vec_len<S>();
}

// centre_columns, with the loops turned so the inner one runs along a row:
// each column's sum is still taken over rows 1..R-1 in order, so the result
// is bit-identical.  `sums` holds `cols` doubles.
inline void centre_columns_by_rows(double* m, int rows, int cols, double* sums) {
  std::fill(sums, sums + cols, 0.0);
  const double* shift = m;  // row 0
  for (int i = 1; i < rows; ++i) {
    const double* r = m + int64_t(i) * cols;
    for (int j = 0; j < cols; ++j) sums[j] += r[j] - shift[j];
  }
  for (int j = 0; j < cols; ++j) {
    const double mean = shift[j] + sums[j] / rows;
    sums[j] = (sums[j] == 0.0) ? shift[j] : mean;  // exact zeros for a constant column
  }
  for (int i = 0; i < rows; ++i) {
    double* r = m + int64_t(i) * cols;
    for (int j = 0; j < cols; ++j) r[j] -= sums[j];
  }
}

// G = scale * A^T A for an R x D matrix A stored row-major with row stride
// lda = round_to_vec<S>(D) (columns D..lda zero).  G is D x D with row stride
// ld >= lda; columns D..ld come out zero, as tridiagonalize's padded loops
// need.  The upper part is computed in register tiles of 4 rows x 2 vectors
// (eight accumulators, each element of A loaded once per tile), the rest
// mirrored.  Every G[i][j] is the same in-order sum over rows whichever
// triangle computes it, so G is exactly symmetric.
template <typename S>
void gram_blocked(const S* a, int rows, int d, int lda, S* g, int ld, S scale) {
  constexpr int VL = vec_len<S>();
  typedef S V __attribute__((vector_size(64)));
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
        store(gi + j0, c0[ii] * scale);
        if (two) store(gi + j0 + VL, c1[ii] * scale);
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
// triangle is kept, half the flops of the full-storage version.  diag[r * K +
// l] and off[r * K + l] receive the tridiagonal, interleaved as
// tridiagonal_eigenvalues_lanes wants it.  `work` holds 2 * d * K elements.
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
  S* vbuf = work;          // v, then
  S* wbuf = work + d * K;  // w = beta B v - h v
  for (int k = 0; k + 2 < d; ++k) {
    const int m = d - k - 1, b0 = k + 1;  // trailing block rows/cols b0 .. d-1
    V norm2 = zero;
    for (int i = 0; i < m; ++i) {
      const V x = load(at(b0 + i, k));
      store(vbuf + i * K, x);
      norm2 += x * x;
    }
    store(diag + k * K, load(at(k, k)));
    const V x0 = load(vbuf);
    V root;
    for (int l = 0; l < K; ++l) root[l] = std::sqrt(norm2[l]);
    const M nz = norm2 != zero;
    const V alpha = x0 > zero ? -root : root;
    store(off + k * K, nz ? alpha : zero);
    const V vtv = S(2) * (norm2 - alpha * x0);
    const V beta = nz ? S(2) / (nz ? vtv : zero + S(1)) : zero;  // 0: nothing to reduce
    store(vbuf, x0 - alpha);
    // w = B v over the lower triangle: row i gives w_i += B_ij v_j and w_j += B_ij v_i
    for (int i = 0; i < m; ++i) store(wbuf + i * K, zero);
    for (int i = 0; i < m; ++i) {
      const S* bi = at(b0 + i, b0);
      const V vi = load(vbuf + i * K);
      V si = load(bi + i * K) * vi;
      for (int j = 0; j < i; ++j) {
        const V bij = load(bi + j * K);
        si += bij * load(vbuf + j * K);
        store(wbuf + j * K, load(wbuf + j * K) + bij * vi);
      }
      store(wbuf + i * K, load(wbuf + i * K) + si);
    }
    V vw = zero;
    for (int i = 0; i < m; ++i) {
      const V wi = beta * load(wbuf + i * K);
      store(wbuf + i * K, wi);
      vw += load(vbuf + i * K) * wi;
    }
    const V h = S(0.5) * beta * vw;
    for (int i = 0; i < m; ++i) store(wbuf + i * K, load(wbuf + i * K) - h * load(vbuf + i * K));
    // B <- B - v w^T - w v^T, lower triangle
    for (int i = 0; i < m; ++i) {
      S* bi = at(b0 + i, b0);
      const V vi = load(vbuf + i * K), wi = load(wbuf + i * K);
      for (int j = 0; j <= i; ++j)
        store(bi + j * K, load(bi + j * K) - (vi * load(wbuf + j * K) + wi * load(vbuf + j * K)));
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
