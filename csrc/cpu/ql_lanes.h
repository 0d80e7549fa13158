// Eigenvalues of K symmetric tridiagonals of one size at once, one matrix per
// SIMD lane (CPU only).
//
// The same implicit QL method with Wilkinson-type shifts as
// tridiagonal_eigenvalues in common/ocnna_math.h, reorganised so that every
// lane works on the same row index at the same time: the matrices are stored
// interleaved (element i of matrix j at [i * K + j]), every operation is one
// vector operation across the K matrices, and what differs between lanes
// (where the unreduced block ends, whether a lane is still sweeping) is a
// per-lane mask.
//
// Why it is exact: lane j performs exactly its own sequence of QL sweeps.  Its
// sweep over rows m_j-1 .. l starts when the shared row counter reaches m_j-1
// (before that the lane's state is held), and the shared top row l only
// advances once every lane has converged there, so a lane that converged
// early simply waits.  Every lane's result is bit-identical to the scalar QL
// (tests/test_build_and_solvers.py checks it).
//
// One rotation is a dependency chain of about 60 cycles (sqrt, then divide);
// several groups of K matrices are stepped in turn
// (tridiagonal_eigenvalues_lanes_n) so the core has independent chains to
// overlap.  Two chains measured 1.4x faster than one; three or four no
// faster than two (the divide/sqrt unit is then the limit).
#pragma once

#include <cmath>
#include <cstring>
#include <new>

#include "../common/ocnna_math.h"

namespace ocnna {
namespace cpu {

// QL on one group of K interleaved tridiagonals, advanced one rotation at a
// time by its driver.
template <typename S, int K>
class QlLanes {
  typedef S V __attribute__((vector_size(sizeof(S) * K)));  // GCC/Clang vector extension
  typedef decltype(V{} < V{}) M;                             // lane masks: all ones or zero

 public:
  // d[i * K + j], e[i * K + j]: diagonal and off-diagonal (entries 0..n-2) of
  // matrix j, scaled to O(1) like tridiagonal_eigenvalues wants.  On return d
  // holds the eigenvalues (unsorted), e is destroyed, ok[j] is false if matrix
  // j did not converge (only possible for non-finite input).
  QlLanes(S* d, S* e, int n, bool* ok) : d_(d), e_(e), n_(n), ok_(ok) {
    for (int j = 0; j < K; ++j) {
      ok_[j] = true;
      iter_[j] = 0;
      dead_[j] = false;
    }
    if (n_ <= 1) {
      done_ = true;
      return;
    }
    for (int j = 0; j < K; ++j) e_[(n_ - 1) * K + j] = S(0);
    done_ = !next_sweep();
  }

  bool done() const { return done_; }

  // One rotation of the current sweep; starts the next sweep when this one ends.
  inline void step() {
    const int i = i_;
    S* di = d_ + i * K;
    S* ei = e_ + i * K;
    const V ev = load(ei), dv = load(di);
    V dn = load(di + K), en = load(ei + K);
    const M act = alive_ & (zero() + S(i) < vm_);
    const V f = vs_ * ev;
    const V b = vc_ * ev;
    const V r = vsqrt(f * f + vg_ * vg_);
    en = act ? r : en;
    const M go = act & (r != zero());
    const V inv = S(1) / r;  // inf where r == 0: those lanes are masked out below
    const V sn = f * inv, cn = vg_ * inv;
    const V gg = dn - vp_;
    const V rr = (dv - gg) * sn + S(2) * cn * b;
    const V pn = sn * rr;
    dn = go ? gg + pn : dn;
    vs_ = go ? sn : vs_;
    vc_ = go ? cn : vc_;
    vp_ = go ? pn : vp_;
    vg_ = go ? cn * rr - b : vg_;
    // r == 0 (underflow): the rotation decoupled the matrix; that lane stops
    // here and restarts with the next sweep (its e[m_j] is zeroed when the
    // sweep ends: no other lane touches it)
    const M under = act & ~go;
    dn = under ? dn - vp_ : dn;
    alive_ &= ~under;
    under_any_ |= under;
    store(di + K, dn);
    store(ei + K, en);
    if (--i_ < l_) {
      finish_sweep();
      done_ = !next_sweep();
    }
  }

 private:
  static V load(const S* src) {
    V v;
    std::memcpy(&v, src, sizeof v);
    return v;
  }
  static void store(S* dst, V v) { std::memcpy(dst, &v, sizeof v); }
  static V zero() { return V{} * S(0); }
  static V vabs(V v) { return v < zero() ? -v : v; }
  // Lane-wise square root; compilers emit one vector sqrt instruction for it
  // (needs -fno-math-errno, set in CMakeLists.txt).
  static V vsqrt(V x) {
    V r;
    for (int j = 0; j < K; ++j) r[j] = std::sqrt(x[j]);
    return r;
  }
  static bool all_set(M x) {
    bool all = true;
    for (int j = 0; j < K; ++j) all = all && x[j] != 0;
    return all;
  }

  // Advances l past rows converged in every lane and sets up the next sweep
  // of the lanes still working at l; false when every eigenvalue is found.
  bool next_sweep() {
    const S eps = SolverLimits<S>::negligible;
    const M none = zero() != zero();
    while (l_ < n_) {
      // m_j: the first negligible off-diagonal at or after l (n-1 if none)
      V vm = zero() + S(n_ - 1);
      M found = none;
      for (int mm = l_; mm < n_ - 1; ++mm) {
        const V dv = load(d_ + mm * K), dn = load(d_ + (mm + 1) * K), ev = load(e_ + mm * K);
        // negligible_off (common/ocnna_math.h), lane-wise
        const M neg = (vabs(ev) <= eps * (vabs(dv) + vabs(dn))) | (vabs(ev) <= eps);
        vm = (neg & ~found) ? zero() + S(mm) : vm;
        found |= neg;
        if (all_set(found)) break;
      }
      bool any = false;
      int mmax = l_;
      for (int j = 0; j < K; ++j) {
        m_[j] = int(vm[j]);
        active_[j] = !dead_[j] && m_[j] != l_;
        if (active_[j] && iter_[j]++ == 60) {
          ok_[j] = false;
          dead_[j] = true;
          active_[j] = false;
        }
        any = any || active_[j];
        mmax = active_[j] && m_[j] > mmax ? m_[j] : mmax;
      }
      if (!any) {  // row l converged in every lane
        for (int j = 0; j < K; ++j) iter_[j] = 0;
        ++l_;
        continue;
      }
      // per-lane shift from the leading 2x2 block of the unreduced part
      const V dl = load(d_ + l_ * K), dl1 = load(d_ + (l_ + 1) * K), el = load(e_ + l_ * K);
      V dm;
      M act;
      for (int j = 0; j < K; ++j) {
        dm[j] = d_[m_[j] * K + j];
        vm_[j] = S(m_[j]);
        act[j] = active_[j] ? -1 : 0;
      }
      const V g0 = (dl1 - dl) / (act ? S(2) * el : zero() + S(1));
      const V r = vsqrt(g0 * g0 + S(1));
      vg_ = dm - dl + (act ? el : zero()) / (g0 + (g0 >= zero() ? r : -r));
      alive_ = act;
      vs_ = vc_ = zero() + S(1);
      vp_ = zero();
      under_any_ = none;
      i_ = mmax - 1;
      return true;
    }
    return false;
  }

  void finish_sweep() {
    for (int j = 0; j < K; ++j) {
      if (under_any_[j]) e_[m_[j] * K + j] = S(0);
      if (!alive_[j]) continue;
      d_[l_ * K + j] -= vp_[j];
      e_[l_ * K + j] = vg_[j];
      e_[m_[j] * K + j] = S(0);
    }
  }

  S* d_;
  S* e_;
  int n_;
  bool* ok_;
  bool done_ = false;
  int l_ = 0, i_ = 0;
  int m_[K];
  bool active_[K];
  int iter_[K];
  bool dead_[K];
  V vs_, vc_, vp_, vg_, vm_;
  M alive_, under_any_;
};

// One group of K interleaved tridiagonals (see QlLanes).
template <typename S, int K>
void tridiagonal_eigenvalues_lanes(S* d, S* e, int n, bool* ok) {
  QlLanes<S, K> q(d, e, n, ok);
  while (!q.done()) q.step();
}

// C groups at once, stepped in turn: C independent dependency chains for
// the core to overlap.  d[c], e[c], ok[c] as for one group.
template <typename S, int K, int C>
void tridiagonal_eigenvalues_lanes_n(S* const* d, S* const* e, bool* const* ok, int n) {
  alignas(64) unsigned char mem[C][sizeof(QlLanes<S, K>)];
  QlLanes<S, K>* q[C];
  for (int c = 0; c < C; ++c) q[c] = new (mem[c]) QlLanes<S, K>(d[c], e[c], n, ok[c]);
  for (bool busy = true; busy;) {
    busy = false;
    for (int c = 0; c < C; ++c)
      if (!q[c]->done()) {
        q[c]->step();
        busy = true;
      }
  }
}

}  // namespace cpu
}  // namespace ocnna
