#include "scorer_cpu.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <vector>

#include "dense.h"
#include "parallel.h"
#include "ql_lanes.h"

namespace ocnna {
namespace cpu {
namespace {

// Loads channels [c0, c0 + nc) of image i into `dst` as nc row-major H x W
// double maps.  The loop order follows the memory order, so channels_last
// (channel stride smallest) reads contiguous runs of channels per pixel.
template <typename T>
void gather(const MapBatch& x, int64_t i, int64_t c0, int64_t nc, double* dst) {
  const T* base = static_cast<const T*>(x.data);
  const int64_t hw = x.h * x.w;
  if (std::llabs(x.sc) < std::llabs(x.sw)) {
    for (int64_t y = 0; y < x.h; ++y)
      for (int64_t xx = 0; xx < x.w; ++xx) {
        const T* p = base + x.offset(i, c0, y, xx);
        double* d = dst + y * x.w + xx;
        for (int64_t c = 0; c < nc; ++c) d[c * hw] = to_double(p[c * x.sc]);
      }
  } else {
    for (int64_t c = 0; c < nc; ++c)
      for (int64_t y = 0; y < x.h; ++y) {
        const T* p = base + x.offset(i, c0 + c, y, 0);
        double* d = dst + c * hw + y * x.w;
        if (x.sw == 1) {
          for (int64_t xx = 0; xx < x.w; ++xx) d[xx] = to_double(p[xx]);
        } else {
          for (int64_t xx = 0; xx < x.w; ++xx) d[xx] = to_double(p[xx * x.sw]);
        }
      }
  }
}

// One vector register of doubles (GCC/Clang vector extension; kVectorBytes,
// dense.h: a wider one is split and spilled).  Plain loops over a block of
// columns were vectorised along the wrong axis by GCC 12.
constexpr int kVD = kVectorBytes / int(sizeof(double));
typedef double VD __attribute__((vector_size(kVectorBytes)));
typedef float VDf __attribute__((vector_size(kVectorBytes / 2)));

inline VD load_vd(const double* p) {
  VD v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline VD load_vd(const float* p) {
  VDf v;
  std::memcpy(&v, p, sizeof v);
  return __builtin_convertvector(v, VD);
}
template <typename T>
inline VD load_vd(const T* p) {
  VD v;
  for (int k = 0; k < kVD; ++k) v[k] = to_double(p[k]);
  return v;
}

// n_components=None: F = ||Xc||_F straight from the source in one pass, no
// gather and no eigen-solve.  This is the path that must stay within a few
// percent of the forward pass, so it reads each element exactly once.
template <typename T>
void energies_all(const MapBatch& x, double* out) {
  const int64_t h = x.h, w = x.w;
  const T* base = static_cast<const T*>(x.data);
  if (std::llabs(x.sc) < std::llabs(x.sw)) {
    // channels innermost (channels_last): accumulate a tile of channels per
    // column at once so every load is part of a contiguous run
    const int64_t tile = std::min<int64_t>(x.c, 64);
    const int64_t tiles = (x.c + tile - 1) / tile;
    parallel_for(x.n * tiles, [&](int64_t begin, int64_t end) {
      std::vector<double> acc(size_t(3 * w * tile));
      for (int64_t t = begin; t < end; ++t) {
        const int64_t i = t / tiles, c0 = (t % tiles) * tile, nc = std::min(tile, x.c - c0);
        double* x0 = acc.data();
        double* s1 = x0 + w * tile;
        double* s2 = s1 + w * tile;
        for (int64_t xx = 0; xx < w; ++xx) {
          const T* p = base + x.offset(i, c0, 0, xx);
          for (int64_t c = 0; c < nc; ++c) {
            x0[xx * tile + c] = to_double(p[c * x.sc]);
            s1[xx * tile + c] = 0.0;
            s2[xx * tile + c] = 0.0;
          }
        }
        for (int64_t y = 1; y < h; ++y)
          for (int64_t xx = 0; xx < w; ++xx) {
            const T* p = base + x.offset(i, c0, y, xx);
            const int64_t k = xx * tile;
            for (int64_t c = 0; c < nc; ++c) {
              const double d = to_double(p[c * x.sc]) - x0[k + c];
              s1[k + c] += d;
              s2[k + c] += d * d;
            }
          }
        for (int64_t c = 0; c < nc; ++c) {
          double total = 0.0, poison = 0.0;
          for (int64_t xx = 0; xx < w; ++xx) {
            const int64_t k = xx * tile + c;
            total += centred_ss_from_shifted(s1[k], s2[k], double(h));
            poison += s2[k] - s2[k] + x0[k] - x0[k];  // NaN unless all finite
          }
          out[i * x.c + c0 + c] = is_finite(poison) ? std::sqrt(total) : NAN;
        }
      }
    });
    return;
  }
  parallel_for(x.n * x.c, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t i = t / x.c, c = t % x.c;
      const T* p = base + x.offset(i, c, 0, 0);
      double total = 0.0, poison = 0.0;
      // Blocks of kB columns with the three accumulators in registers: the
      // loop is bound by loads and conversions, not by accumulator traffic.
      constexpr int kB = kVD;
      int64_t xb = 0;
      if (x.sw == 1) {
        for (; xb + kB <= w; xb += kB) {
          const VD x0 = load_vd(p + xb);
          // two accumulator sets (odd/even rows) halve the add-latency chain
          VD s1 = VD{}, s2 = s1, t1 = s1, t2 = s1;
          int64_t y = 1;
          for (; y + 1 < h; y += 2) {
            const VD d = load_vd(p + y * x.sh + xb) - x0;
            const VD e = load_vd(p + (y + 1) * x.sh + xb) - x0;
            s1 += d;
            s2 += d * d;
            t1 += e;
            t2 += e * e;
          }
          if (y < h) {
            const VD d = load_vd(p + y * x.sh + xb) - x0;
            s1 += d;
            s2 += d * d;
          }
          s1 += t1;
          s2 += t2;
          for (int k = 0; k < kB; ++k) {
            total += centred_ss_from_shifted(s1[k], s2[k], double(h));
            poison += s2[k] - s2[k] + x0[k] - x0[k];  // NaN unless all finite
          }
        }
      }
      for (; xb < w; ++xb) {  // leftover columns, or any column stride
        const T* col = p + xb * x.sw;
        const double x0 = to_double(col[0]);
        double s1 = 0.0, s2 = 0.0;
        for (int64_t y = 1; y < h; ++y) {
          const double d = to_double(col[y * x.sh]) - x0;
          s1 += d;
          s2 += d * d;
        }
        total += centred_ss_from_shifted(s1, s2, double(h));
        poison += s2 - s2 + x0 - x0;
      }
      out[t] = is_finite(poison) ? std::sqrt(total) : NAN;
    }
  });
}

// First step of the truncated path for one h x w map gathered row-major into
// `map` (double): column means and total energy in double.  Returns true
// when an eigen-solve is still needed; otherwise *f already holds F (0 for a
// constant map, ||Xc||_F when all components are kept, NaN for non-finite
// input).  Mirrors the start of map_energy in common/ocnna_math.h.
inline bool needs_solve(const double* map, int h, int w, const EnergyParams& p, double* means, double* total,
                        double* f) {
  const double t = centre_stats(map, h, w, means);
  *total = t;
  if (!is_finite(t)) {
    *f = NAN;
    return false;
  }
  if (t == 0.0 || !needs_eigen(p, h, w)) {
    *f = std::sqrt(t);
    return false;
  }
  return true;
}

// Largest Gram side reduced in SIMD lanes (gram_lanes, tridiagonalize_lanes):
// a group's interleaved matrices, K * d * max(h, w) elements, then stay
// within about 1 MB.  Larger maps are reduced one at a time.
constexpr int kMaxLaneSide = 128;

// kRank: HRank's per-map rank (map_rank in common/ocnna_math.h), one map at
// a time on a thread's share of the maps, gathered to double.  Uncentred
// and in double throughout, so it shares nothing with the energy kernels.
template <typename T>
void ranks_typed(const MapBatch& x, double* out) {
  const int h = int(x.h), w = int(x.w), d = h < w ? h : w;
  parallel_for(x.n * x.c, [&](int64_t begin, int64_t end) {
    std::vector<double> map(size_t(x.h * x.w)), scratch(size_t(x.h * x.w + int64_t(d) * d + 4 * d));
    for (int64_t t = begin; t < end; ++t) {
      gather<T>(x, t / x.c, t % x.c, 1, map.data());
      out[t] = map_rank(map.data(), h, w, scratch.data());
    }
  });
}

template <typename T>
void energies_typed(const MapBatch& x, const EnergyParams& p, double* out) {
  if (p.mode == kRank) return ranks_typed<T>(x, out);
  if (!needs_eigen(p, int(x.h), int(x.w))) return energies_all<T>(x, out);
  // Compute type: float for inputs of at most float precision (docs/scoring.md §5
  // allows 1e-4 there, and float doubles the SIMD width), double for float64 (1e-9).
  using S = typename ExactFloat<T>::type;
  const int h = int(x.h), w = int(x.w), d = h < w ? h : w, rows = h < w ? w : h;
  const int64_t hw = x.h * x.w;
  // Maps go through the Householder and QL stages kLanes at a time, one per
  // lane of a vector register (dense.h, ql_lanes.h), and two such groups share
  // the QL stage, so tiles hold a multiple of 2 * kLanes channels;
  // channels_last tiles are wider so each cache line is read once.
  constexpr int kLanes = vec_len<S>();
  constexpr int kPair = 2 * kLanes;
  const bool channel_inner = std::llabs(x.sc) < std::llabs(x.sw);
  const int64_t want = channel_inner ? std::max<int64_t>(kPair, (32 << 10) / hw) : kPair;
  const int64_t tile = std::min<int64_t>(x.c, want);
  const int64_t tiles_per_image = (x.c + tile - 1) / tile;
  const int ld = padded_ld<S>(d);
  const bool lane_reduce = d <= kMaxLaneSide;
  parallel_for(x.n * tiles_per_image, [&](int64_t begin, int64_t end) {
    // one allocation per thread and call, none per map
    std::vector<double> maps(static_cast<size_t>(tile * hw));
    std::vector<double> means(static_cast<size_t>(kLanes) * w);  // per lane
    const int lda = lane_reduce ? (d + 3) / 4 * 4 : round_to_vec<S>(d);  // columns of A
    std::vector<S> a(size_t(rows) * lda * (lane_reduce ? kLanes : 1));  // A; a group's, interleaved
    std::vector<S> gram(lane_reduce ? size_t(kLanes) * d * d : size_t(d) * ld);  // likewise the Gram
    std::vector<S> work(size_t(2 * ld)), row(size_t(kLanes) * lda);
    std::vector<S> lanes_t(size_t(2 * 6) * d * kLanes);  // per group: tridiagonal, reflector work
    std::vector<S> one(static_cast<size_t>(2 * d));     // one map's tridiagonal (large maps)
    std::vector<S> eig(static_cast<size_t>(d));
    struct Group {
      S* diag;
      S* off;
      double total[kLanes];
      int64_t chan[kLanes];
      int pending;
      bool ok[kLanes];
    } groups[2];
    for (int k = 0; k < 2; ++k) {
      groups[k].diag = lanes_t.data() + size_t(k) * 6 * d * kLanes;
      groups[k].off = groups[k].diag + size_t(d) * kLanes;
    }
    // Tridiagonals of the maps of channels [g0, g1) of the tile that need an
    // eigen-solve, into group q's lanes; the others get their F at once.
    // A = Xc / ||Xc|| (W <= H) or its transpose (W > H), whose A^T A is the
    // unit-trace Gram of the smaller side: unit trace leaves the eigenvalue
    // ratios alone and keeps float far from overflow and underflow.
    const bool transpose = w > h;
    auto reduce_group = [&](Group& q, int64_t i, int64_t c0, int64_t g0, int64_t g1) {
      q.pending = 0;
      const double* src[kLanes];
      double unit[kLanes];
      for (int64_t c = g0; c < g1; ++c) {
        const int k = q.pending;
        const double* map = maps.data() + c * hw;
        double f;
        if (!needs_solve(map, h, w, p, means.data() + size_t(k) * w, &q.total[k], &f)) {
          out[i * x.c + c0 + c] = f;  // lane k is left to the next map
          continue;
        }
        src[k] = map;
        unit[k] = 1.0 / std::sqrt(q.total[k]);
        if (!lane_reduce) {
          write_unit<S>(map, h, w, means.data() + size_t(k) * w, unit[k], a.data(), lda, transpose);
          gram_blocked<S>(a.data(), rows, d, lda, gram.data(), ld);
          tridiagonalize(gram.data(), d, one.data(), one.data() + d, work.data(), ld);
          for (int r = 0; r < d; ++r) {
            q.diag[r * kLanes + k] = one[size_t(r)];
            q.off[r * kLanes + k] = one[size_t(d + r)];
          }
        }
        q.chan[q.pending++] = c0 + c;
      }
      if (q.pending == 0) return;
      if (lane_reduce) {
        // idle lanes get a zero matrix: nothing to reduce, converged at once
        write_unit_lanes<S, kLanes>(src, h, w, means.data(), unit, q.pending, a.data(), lda, transpose,
                                    row.data());
        gram_lanes<S, kLanes>(a.data(), rows, d, lda, gram.data());
        tridiagonalize_lanes<S, kLanes>(gram.data(), d, q.diag, q.off, q.off + size_t(d) * kLanes);
      } else {
        for (int k = q.pending; k < kLanes; ++k)
          for (int r = 0; r < d; ++r) q.diag[r * kLanes + k] = q.off[r * kLanes + k] = S(0);
      }
    };
    for (int64_t t = begin; t < end; ++t) {
      const int64_t i = t / tiles_per_image;
      const int64_t c0 = (t % tiles_per_image) * tile;
      const int64_t nc = std::min(tile, x.c - c0);
      gather<T>(x, i, c0, nc, maps.data());
      for (int64_t g0 = 0; g0 < nc; g0 += kPair) {
        Group& qa = groups[0];
        Group& qb = groups[1];
        reduce_group(qa, i, c0, g0, std::min<int64_t>(g0 + kLanes, nc));
        reduce_group(qb, i, c0, std::min<int64_t>(g0 + kLanes, nc), std::min<int64_t>(g0 + kPair, nc));
        if (qa.pending > 0 && qb.pending > 0) {  // two independent QL chains
          S* const dg[2] = {qa.diag, qb.diag};
          S* const of[2] = {qa.off, qb.off};
          bool* const ok[2] = {qa.ok, qb.ok};
          tridiagonal_eigenvalues_lanes_n<S, kLanes, 2>(dg, of, ok, d);
        } else {
          for (Group* q : {&qa, &qb})
            if (q->pending > 0) tridiagonal_eigenvalues_lanes<S, kLanes>(q->diag, q->off, d, q->ok);
        }
        for (Group* q : {&qa, &qb})
          for (int k = 0; k < q->pending; ++k) {
            for (int r = 0; r < d; ++r) eig[size_t(r)] = q->diag[r * kLanes + k];
            std::sort(eig.begin(), eig.end(), std::greater<S>());  // as sort_descending, in n log n
            out[i * x.c + q->chan[k]] =
                q->ok[k] ? checked_energy(std::sqrt(kept_energy(eig.data(), d, p) * q->total[k])) : kSolveFailed;
          }
      }
    }
  });
}

}  // namespace

void energies(const MapBatch& x, const EnergyParams& p, double* out) {
  if (x.n <= 0 || x.c <= 0) return;
  if (x.h <= 0 || x.w <= 0) throw std::invalid_argument("maps must have H >= 1 and W >= 1");
  switch (x.dtype) {
    case kFloat32: return energies_typed<float>(x, p, out);
    case kFloat64: return energies_typed<double>(x, p, out);
    case kFloat16: return energies_typed<Half16>(x, p, out);
    case kBFloat16: return energies_typed<BFloat16>(x, p, out);
    default: throw std::invalid_argument("unsupported dtype code");
  }
}

int64_t accumulate(const MapBatch& x, const EnergyParams& p, double* count, double* mean,
                   double* m2) {
  if (x.n <= 0) return -1;
  std::vector<double> f(size_t(x.n * x.c));
  energies(x, p, f.data());
  // Non-finite energies come only from non-finite input; kSolveFailed (negative)
  // only from our own arithmetic.  Bad input is reported first.
  int64_t failed = -1;
  for (int64_t k = 0; k < x.n * x.c; ++k) {
    if (!is_finite(f[size_t(k)])) return k % x.c;
    if (f[size_t(k)] < 0.0 && failed < 0) failed = kInternalFlag + k % x.c;
  }
  if (failed >= 0) return failed;
  const double nb = double(x.n);
  for (int64_t c = 0; c < x.c; ++c) {
    double mb, q;
    batch_summary(f.data() + c, x.n, x.c, mb, q);
    chan_merge(count[c], mean[c], m2[c], nb, mb, q);
  }
  return -1;
}

}  // namespace cpu
}  // namespace ocnna
