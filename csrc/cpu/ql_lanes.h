// Eigenvalues of K symmetric tridiagonals of one size at once, one matrix per
// SIMD lane (CPU only).
//
// The same implicit QL method with Wilkinson-type shifts as
// tridiagonal_eigenvalues in common/ocnna_math.h, reorganised so that every
// lane works on the same row index at the same time: the matrices are stored
// interleaved (element i of matrix j at [i * K + j]), every loop over lanes is
// a fixed-length loop the compiler turns into vector instructions, and what
// differs between lanes (where the unreduced block ends, whether a lane is
// still sweeping) is a per-lane mask.
//
// Why it is exact: lane j performs exactly its own sequence of QL sweeps.  Its
// sweep over rows m_j-1 .. l starts when the shared row counter reaches m_j-1
// (before that the lane's state is held), and the shared top row l only
// advances once every lane has converged there, so a lane that converged
// early simply waits.  A QL rotation is a ~60-cycle dependency chain (sqrt,
// divide); running K chains in the lanes of one register is what makes this
// several times faster than stepping the matrices one after another.
#pragma once

#include <cmath>
#include <cstring>

#include "../common/ocnna_math.h"

namespace ocnna {
namespace cpu {

// Lane-wise square root of a vector-extension value; compilers emit one vector
// sqrt instruction for it (needs -fno-math-errno, set in CMakeLists.txt).
template <typename V>
inline V vsqrt(V x) {
  V r;
  for (int j = 0; j < int(sizeof(V) / sizeof(x[0])); ++j) r[j] = std::sqrt(x[j]);
  return r;
}

// d[i * K + j], e[i * K + j]: diagonal and off-diagonal (entries 0..n-2) of
// matrix j, scaled to O(1) like tridiagonal_eigenvalues wants.  On return d
// holds the eigenvalues (unsorted), e is destroyed, ok[j] is false if matrix
// j did not converge (only possible for non-finite input).
template <typename S, int K>
void tridiagonal_eigenvalues_lanes(S* d, S* e, int n, bool* ok) {
  typedef S V __attribute__((vector_size(sizeof(S) * K)));  // GCC/Clang vector extension
  typedef decltype(V{} < V{}) M;  // lane masks: all ones or zero
  auto load = [](const S* src) {
    V v;
    std::memcpy(&v, src, sizeof v);
    return v;
  };
  auto vabs = [](V v) { return v < V{} * S(0) ? -v : v; };
  auto all_set = [](M x) {
    bool all = true;
    for (int j = 0; j < K; ++j) all = all && x[j] != 0;
    return all;
  };
  for (int j = 0; j < K; ++j) ok[j] = true;
  if (n <= 1) return;
  for (int j = 0; j < K; ++j) e[(n - 1) * K + j] = S(0);
  int iter[K] = {};
  bool dead[K] = {};
  const S eps = negligible<S>();
  const V zero = V{} * S(0), one = zero + S(1), two = zero + S(2);
  const M mzero = zero != zero;
  for (int l = 0; l < n;) {
    // m_j: the first negligible off-diagonal at or after l (n-1 if none)
    int m[K];
    {
      V vm = zero + S(n - 1);
      M found = mzero;
      for (int mm = l; mm < n - 1; ++mm) {
        const V dv = load(d + mm * K), dn = load(d + (mm + 1) * K), ev = load(e + mm * K);
        const M neg = vabs(ev) <= eps * (vabs(dv) + vabs(dn));
        vm = (neg & ~found) ? zero + S(mm) : vm;
        found |= neg;
        if (all_set(found)) break;
      }
      for (int j = 0; j < K; ++j) m[j] = int(vm[j]);
    }
    bool active[K];
    bool any = false;
    int mmax = l;
    for (int j = 0; j < K; ++j) {
      active[j] = !dead[j] && m[j] != l;
      if (active[j] && iter[j]++ == 60) {
        ok[j] = false;
        dead[j] = true;
        active[j] = false;
      }
      any = any || active[j];
      mmax = active[j] && m[j] > mmax ? m[j] : mmax;
    }
    if (!any) {  // row l converged in every lane
      for (int j = 0; j < K; ++j) iter[j] = 0;
      ++l;
      continue;
    }
    // per-lane sweep set-up: shift from the leading 2x2 block of the unreduced part
    S s[K], c[K], p[K], g[K];
    const S* dl = d + l * K;
    const S* el = e + l * K;
    for (int j = 0; j < K; ++j) {
      const S den = active[j] ? S(2) * el[j] : S(1);
      const S g0 = (dl[j + K] - dl[j]) / den;
      const S r = std::sqrt(g0 * g0 + S(1));
      const S dmj = d[m[j] * K + j];
      const S num = active[j] ? el[j] : S(0);
      g[j] = dmj - dl[j] + num / (g0 + (g0 >= S(0) ? r : -r));
      s[j] = c[j] = S(1);
      p[j] = S(0);
    }
    // the sweep proper, in vector registers
    V vs, vc, vp, vg, vm;
    M alive;
    for (int j = 0; j < K; ++j) {
      vs[j] = s[j];
      vc[j] = c[j];
      vp[j] = p[j];
      vg[j] = g[j];
      vm[j] = S(m[j]);
      alive[j] = active[j] ? -1 : 0;
    }
    M under_any = mzero;
    for (int i = mmax - 1; i >= l; --i) {
      S* di = d + i * K;
      S* ei = e + i * K;
      V ev, dv, dn, en;
      std::memcpy(&ev, ei, sizeof ev);
      std::memcpy(&dv, di, sizeof dv);
      std::memcpy(&dn, di + K, sizeof dn);
      std::memcpy(&en, ei + K, sizeof en);
      const M act = alive & (zero + S(i) < vm);
      const V f = vs * ev;
      const V b = vc * ev;
      const V r = vsqrt(f * f + vg * vg);
      en = act ? r : en;
      const M go = act & (r != zero);
      const V inv = one / (go ? r : one);
      const V sn = f * inv, cn = vg * inv;
      const V gg = dn - vp;
      const V rr = (dv - gg) * sn + two * cn * b;
      const V pn = sn * rr;
      dn = go ? gg + pn : dn;
      vs = go ? sn : vs;
      vc = go ? cn : vc;
      vp = go ? pn : vp;
      vg = go ? cn * rr - b : vg;
      // r == 0 (underflow): the rotation decoupled the matrix; that lane
      // stops here and restarts with the next round (its e[m_j] is zeroed
      // after the sweep: no other lane touches it)
      const M under = act & ~go;
      dn = under ? dn - vp : dn;
      alive &= ~under;
      under_any |= under;
      std::memcpy(di + K, &dn, sizeof dn);
      std::memcpy(ei + K, &en, sizeof en);
    }
    for (int j = 0; j < K; ++j)
      if (under_any[j]) e[m[j] * K + j] = S(0);
    for (int j = 0; j < K; ++j) {
      p[j] = vp[j];
      g[j] = vg[j];
      active[j] = alive[j] != 0;
    }
    for (int j = 0; j < K; ++j) {
      if (!active[j]) continue;
      d[l * K + j] -= p[j];
      e[l * K + j] = g[j];
      e[m[j] * K + j] = S(0);
    }
  }
}

}  // namespace cpu
}  // namespace ocnna
