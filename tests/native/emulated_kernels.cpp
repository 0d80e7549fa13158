// The CUDA kernels of csrc/cuda/kernels.cuh, run on the CPU under
// cuda_emulation.h and checked against plain loops.  Built and run by
// tests/test_cuda_kernels_emulated.py; prints each failure, exits 1 if any.
// By hand: g++ -std=c++20 -O1 -pthread -Icsrc tests/native/emulated_kernels.cpp -o /tmp/emk && /tmp/emk
//
// Covered: the launch plan's kernel choice and shapes, both None kernels on
// several layouts (NCHW, channels_last, W-major, a negative stride) with the
// planned grid and with a grid of 2 blocks (the grid-stride loops), the
// truncated kernel (block per map, in shared and in global memory; a warp
// per map for small ones), and merge_kernel: Chan merges across many blocks, a batch with
// non-finite energies rejected whole, the first bad channel reported, and the
// scratch status words left at -1 and 0.
#include "cuda_emulation.h"

#include "cuda/kernels.cuh"

#include <cmath>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using namespace ocnna;
using namespace ocnna::cuda;

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::printf("FAIL: %s\n", what.c_str());
  }
}

double rel(double got, double want) {
  if (got == want) return 0.0;
  return std::fabs(got - want) / std::fmax(std::fabs(want), 1e-300);
}

enum class Layout { NCHW, ChannelsLast, WMajor, ChannelsLastFlippedW };

const char* name(Layout l) {
  switch (l) {
    case Layout::NCHW: return "nchw";
    case Layout::ChannelsLast: return "channels_last";
    case Layout::WMajor: return "w_major";
    default: return "channels_last_flipped_w";
  }
}

// A batch of random maps in `layout`; value(i, c, y, x) reads it back.
template <typename T>
struct Batch {
  std::vector<T> store;
  MapBatch x{};
  double value(int64_t i, int64_t c, int64_t y, int64_t xx) const {
    return double(static_cast<const T*>(x.data)[x.offset(i, c, y, xx)]);
  }
};

// What the maps hold, beside plain noise: rank-2 maps (most PCA components
// exactly zero), a large common offset over small variation, and constant
// columns (the centred map is exactly zero); and the exact-zero structure of
// post-ReLU maps: isolated non-zeros in a few columns (Sparse, like
// shared/fixtures/sparse_relu_map_32x32_f64.npy), rectified noise with whole
// rows and columns zeroed (ZeroRowsCols).
enum class Kind { Normal, LowRank, Offset, ConstantColumns, Sparse, ZeroRowsCols };

const char* name(Kind k) {
  switch (k) {
    case Kind::Normal: return "normal";
    case Kind::LowRank: return "low_rank";
    case Kind::Offset: return "offset";
    case Kind::Sparse: return "sparse";
    case Kind::ZeroRowsCols: return "zero_rows_cols";
    default: return "constant_columns";
  }
}

template <typename T>
Batch<T> make_batch(int64_t n, int64_t c, int64_t h, int64_t w, Layout layout, unsigned seed, double scale = 1.0,
                    Kind kind = Kind::Normal) {
  Batch<T> b;
  b.store.resize(size_t(n * c * h * w));
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(1.0, 3.0);
  for (auto& v : b.store) v = T(normal(rng) * scale);
  MapBatch& x = b.x;
  x.dtype = sizeof(T) == 8 ? kFloat64 : kFloat32;
  x.n = n, x.c = c, x.h = h, x.w = w;
  x.data = b.store.data();
  switch (layout) {
    case Layout::NCHW: x.sn = c * h * w, x.sc = h * w, x.sh = w, x.sw = 1; break;
    case Layout::ChannelsLast: x.sn = h * w * c, x.sc = 1, x.sh = w * c, x.sw = c; break;
    case Layout::WMajor: x.sn = c * h * w, x.sc = h * w, x.sh = 1, x.sw = h; break;
    case Layout::ChannelsLastFlippedW:
      x.sn = h * w * c, x.sc = 1, x.sh = w * c, x.sw = -c;
      x.data = b.store.data() + (w - 1) * c;  // element (0, 0, 0, 0) is the last column
      break;
  }
  if (kind != Kind::Normal) {
    if (h > 64 || w > 64) throw std::invalid_argument("make_batch: structured maps up to 64 x 64");
    T* data = static_cast<T*>(const_cast<void*>(x.data));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t ch = 0; ch < c; ++ch) {
        double u[2][64], v[2][64];  // rank-2 factors (h, w <= 64)
        for (int k = 0; k < 2; ++k)
          for (int j = 0; j < 64; ++j) u[k][j] = normal(rng), v[k][j] = normal(rng);
        for (int64_t y = 0; y < h; ++y)
          for (int64_t xx = 0; xx < w; ++xx) {
            T& e = data[x.offset(i, ch, y, xx)];
            if (kind == Kind::LowRank) e = T((u[0][y] * v[0][xx] + u[1][y] * v[1][xx]) * scale);
            if (kind == Kind::Offset) e = T((1000.0 + 0.01 * normal(rng)) * scale);
            if (kind == Kind::ConstantColumns) e = T(v[0][xx] * scale);
            // Sparse: three live columns, about one entry in eight of them non-zero
            const bool live_col = xx % 11 == 1 || xx % 11 == 6 || xx == w - 2;
            if (kind == Kind::Sparse) e = T(live_col && normal(rng) > 4.5 ? normal(rng) * normal(rng) * 0.01 * scale : 0.0);
            // ZeroRowsCols: rectified noise, every third row and every fourth column zero
            if (kind == Kind::ZeroRowsCols) e = T(y % 3 == 0 || xx % 4 == 1 ? 0.0 : std::fmax(u[0][y] * v[0][xx], 0.0) * scale);
          }
      }
  }
  return b;
}

// The None path's F^2 by plain two-pass loops.
template <typename T>
double reference_ss(const Batch<T>& b, int64_t i, int64_t c) {
  const MapBatch& x = b.x;
  double total = 0.0;
  for (int64_t xx = 0; xx < x.w; ++xx) {
    double mean = 0.0;
    for (int64_t y = 0; y < x.h; ++y) mean += b.value(i, c, y, xx);
    mean /= double(x.h);
    for (int64_t y = 0; y < x.h; ++y) {
      const double d = b.value(i, c, y, xx) - mean;
      total += d * d;
    }
  }
  return total;
}

// Launches what the plan says, as scorer_cuda.cu does; `grid` overrides the
// planned number of blocks when > 0.
template <typename T>
void run_plan(const EnergyPlan& plan, const MapBatch& x, const EnergyParams& p, double* out, int grid = 0) {
  const int blocks = grid > 0 ? grid : plan.blocks;
  std::vector<double> ws;
  switch (plan.kernel) {
    case EnergyKernel::ChannelsInner:
      ocnna_emu::launch(blocks, plan.threads, 0, [&] { channels_inner_kernel<T>(x, plan.split, out); });
      break;
    case EnergyKernel::ColumnsInner:
      ocnna_emu::launch(blocks, plan.threads, 0, [&] { columns_inner_kernel<T>(x, out); });
      break;
    case EnergyKernel::BlockMap:
      ocnna_emu::launch(blocks, plan.threads, plan.smem_bytes,
                        [&] { block_map_kernel<T>(x, p, out, nullptr, plan.rel_tol); });
      break;
    case EnergyKernel::BlockMapGlobal:
      ws.resize(plan.ws_bytes / sizeof(double));
      ocnna_emu::launch(blocks, plan.threads, 0, [&] { block_map_kernel<T>(x, p, out, ws.data(), plan.rel_tol); });
      break;
  }
}

template <typename T>
void check_none(int64_t n, int64_t c, int64_t h, int64_t w, Layout layout, EnergyKernel want, int grid) {
  const Batch<T> b = make_batch<T>(n, c, h, w, layout, unsigned(n * 1000 + c * 100 + h * 10 + w));
  const EnergyParams p{kAll, 0, 0.0};
  const EnergyPlan plan = plan_energies(b.x, p, 4, 48 * 1024);
  const std::string tag = std::string("None ") + (sizeof(T) == 8 ? "f64 " : "f32 ") + name(layout) + " " +
                          std::to_string(n) + "x" + std::to_string(c) + "x" + std::to_string(h) + "x" +
                          std::to_string(w) + " grid " + std::to_string(grid);
  expect(plan.kernel == want, tag + ": planned kernel");
  expect(plan.sums, tag + ": None leaves sums of squares");
  expect(plan.threads % 32 == 0 && plan.threads <= kReduceThreads, tag + ": block size");
  std::vector<double> out(size_t(n * c), -1.0);  // -1 marks a map never written
  run_plan<T>(plan, b.x, p, out.data(), grid);
  double worst = 0.0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch) worst = std::fmax(worst, rel(out[size_t(i * c + ch)], reference_ss(b, i, ch)));
  expect(worst <= 1e-12, tag + ": F^2 off by " + std::to_string(worst));
}

// The truncated kernels against the shared header's map_energy (all double).
// Inputs of float precision are worked in float on the GPU (as on the CPU):
// they get a float-sized tolerance; `scale` moves the activations to where
// their squares overflow or underflow float.
template <typename T>
void check_truncated(int64_t n, int64_t c, int64_t h, int64_t w, EnergyParams p, int smem_optin, EnergyKernel want,
                     double scale = 1.0, Kind kind = Kind::Normal, int threads = 0) {
  const Batch<T> b = make_batch<T>(n, c, h, w, Layout::NCHW, unsigned(h * 31 + w), scale, kind);
  EnergyPlan plan = plan_energies(b.x, p, 4, smem_optin);
  const std::string tag = std::string("truncated ") + (sizeof(T) == 8 ? "f64 " : "f32 ") + std::to_string(h) + "x" +
                          std::to_string(w) + " mode " + std::to_string(p.mode) + " optin " +
                          std::to_string(smem_optin) + " scale " + [&] {
                            char buf[32];
                            std::snprintf(buf, sizeof buf, "%g", scale);
                            return std::string(buf);
                          }() + " " + name(kind) + (threads ? " threads " + std::to_string(threads) : "");
  expect(plan.kernel == want, tag + ": planned kernel");
  expect(!plan.sums, tag + ": truncated energies are final");
  expect(plan.threads % 32 == 0 && plan.threads <= kMaxMapThreads, tag + ": block size");
  if (threads > 0) plan.threads = threads;  // fewer threads than rows: the kernel's strided loops
  std::vector<double> out(size_t(n * c), -1.0);
  run_plan<T>(plan, b.x, p, out.data());
  const int d = int(h < w ? h : w);
  std::vector<double> map(size_t(h * w)), scratch(size_t(h * w + d * d + 4 * d));
  double worst = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t ch = 0; ch < c; ++ch) {
      for (int64_t y = 0; y < h; ++y)
        for (int64_t xx = 0; xx < w; ++xx) map[size_t(y * w + xx)] = b.value(i, ch, y, xx);
      const double want_f = map_energy(map.data(), int(h), int(w), p, scratch.data());
      worst = std::fmax(worst, rel(out[size_t(i * c + ch)], want_f));
    }
  }
  const double tol = sizeof(T) == 8 ? 1e-9 : 1e-6;
  std::printf("%s: worst relative difference %.2g\n", tag.c_str(), worst);
  expect(worst <= tol, tag + ": F off by " + std::to_string(worst));
}

struct Accumulators {
  std::vector<double> count, mean, m2;
  int64_t status[3] = {-1, -1, 0};
  explicit Accumulators(int64_t c) : count(size_t(c)), mean(size_t(c)), m2(size_t(c)) {}
};

void merge(Accumulators& a, std::vector<double>& f, int64_t n, int64_t c, bool take_sqrt) {
  std::vector<double> tmp(size_t(2 * c));
  ocnna_emu::launch(merge_blocks(c), kMergeThreads, 0, [&] {
    merge_kernel(f.data(), n, c, take_sqrt, tmp.data(), tmp.data() + c, a.count.data(), a.mean.data(),
                 a.m2.data(), a.status);
  });
}

void check_merge() {
  const int64_t c = 300, n = 7;  // 38 blocks of 8 channels
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> uni(0.5, 4.0);
  auto batch = [&] {
    std::vector<double> f(size_t(n * c));
    for (auto& v : f) v = uni(rng);
    return f;
  };
  Accumulators got(c);
  std::vector<std::vector<double>> accepted;
  for (int k = 0; k < 2; ++k) {
    accepted.push_back(batch());
    std::vector<double> f = accepted.back();
    merge(got, f, n, c, true);
    expect(got.status[0] == -1 && got.status[1] == -1 && got.status[2] == 0, "merge: status words after a good batch");
  }
  // a batch with NaN in channel 217 and Inf in channel 298 (energies are square-rooted first)
  std::vector<double> bad = batch();
  bad[size_t(2 * c + 217)] = NAN;
  bad[size_t(5 * c + 298)] = INFINITY;
  const Accumulators before = got;
  merge(got, bad, n, c, true);
  expect(got.status[0] == 217, "merge: first bad channel is " + std::to_string(got.status[0]) + ", want 217");
  expect(got.status[1] == -1 && got.status[2] == 0, "merge: scratch words reset after a rejected batch");
  bool unchanged = true;
  for (int64_t ch = 0; ch < c; ++ch)
    unchanged = unchanged && got.count[size_t(ch)] == before.count[size_t(ch)] &&
                got.mean[size_t(ch)] == before.mean[size_t(ch)] && got.m2[size_t(ch)] == before.m2[size_t(ch)];
  expect(unchanged, "merge: a rejected batch changes nothing");
  // later batches go on; the host clears status[0] when it reads it
  accepted.push_back(batch());
  std::vector<double> f = accepted.back();
  merge(got, f, n, c, true);
  expect(got.status[0] == 217, "merge: the reported channel stays until the host reads it");
  // final energies (take_sqrt = false) go in as they are
  accepted.push_back(batch());
  for (auto& v : accepted.back()) v = std::sqrt(v);
  std::vector<double> g = accepted.back();
  for (auto& v : accepted.back()) v = v * v;  // the reference squares back, then takes the root again
  merge(got, g, n, c, false);
  // reference: two-pass statistics of every accepted energy
  double worst = 0.0;
  const double total = double(n) * double(accepted.size());
  for (int64_t ch = 0; ch < c; ++ch) {
    double s = 0.0;
    for (const auto& a : accepted)
      for (int64_t i = 0; i < n; ++i) s += std::sqrt(a[size_t(i * c + ch)]);
    const double mu = s / total;
    double q = 0.0;
    for (const auto& a : accepted)
      for (int64_t i = 0; i < n; ++i) q += (std::sqrt(a[size_t(i * c + ch)]) - mu) * (std::sqrt(a[size_t(i * c + ch)]) - mu);
    worst = std::fmax(worst, rel(got.mean[size_t(ch)], mu));
    worst = std::fmax(worst, rel(got.m2[size_t(ch)], q));
    expect(got.count[size_t(ch)] == total, "merge: count");
  }
  expect(worst <= 1e-12, "merge: mean/M2 off by " + std::to_string(worst));
}

}  // namespace

int main() {
  // chunk_split: even chunks of at most 8 columns, every column covered once
  for (int w = 1; w <= 300; ++w) {
    const ChunkSplit s = chunk_split(w);
    expect(s.width >= 1 && s.width <= kChunk && s.chunks * s.width >= w && (s.chunks - 1) * s.width < w,
           "chunk_split(" + std::to_string(w) + ") covers the row");
    expect(s.kt >= 1 && s.kt <= 8 && s.kt * s.images <= 8 && s.kt <= s.chunks, "chunk_split(" + std::to_string(w) + ") threads");
  }
  for (int grid : {0, 2}) {
    check_none<float>(3, 70, 12, 29, Layout::ChannelsLast, EnergyKernel::ChannelsInner, grid);
    check_none<float>(2, 40, 9, 112, Layout::ChannelsLast, EnergyKernel::ChannelsInner, grid);
    check_none<double>(5, 33, 7, 7, Layout::ChannelsLast, EnergyKernel::ChannelsInner, grid);
    check_none<float>(3, 36, 6, 57, Layout::ChannelsLastFlippedW, EnergyKernel::ChannelsInner, grid);
    check_none<float>(4, 3, 5, 300, Layout::NCHW, EnergyKernel::ColumnsInner, grid);
    check_none<double>(9, 5, 6, 14, Layout::NCHW, EnergyKernel::ColumnsInner, grid);
    check_none<float>(2, 7, 11, 1, Layout::NCHW, EnergyKernel::ColumnsInner, grid);
    check_none<float>(3, 6, 13, 10, Layout::WMajor, EnergyKernel::ColumnsInner, grid);
    check_none<double>(2, 5, 37, 33, Layout::NCHW, EnergyKernel::ColumnsInner, grid);
  }
  check_truncated<double>(2, 3, 9, 7, EnergyParams{kCount, 3, 0.0}, 48 * 1024, EnergyKernel::BlockMap);
  check_truncated<float>(3, 5, 7, 7, EnergyParams{kRatio, 0, 0.95}, 48 * 1024, EnergyKernel::BlockMap);
  check_truncated<float>(2, 4, 14, 14, EnergyParams{kRatio, 0, 0.95}, 48 * 1024, EnergyKernel::BlockMap);
  // the smallest eigen-solves (no Householder step, one step) and a wide map (W > H) in one warp
  check_truncated<float>(2, 3, 2, 9, EnergyParams{kCount, 1, 0.0}, 48 * 1024, EnergyKernel::BlockMap);
  check_truncated<float>(2, 3, 3, 16, EnergyParams{kRatio, 0, 0.5}, 48 * 1024, EnergyKernel::BlockMap);
  check_truncated<double>(2, 3, 5, 12, EnergyParams{kRatio, 0, 0.9}, 48 * 1024, EnergyKernel::BlockMap);
  check_truncated<double>(2, 3, 20, 17, EnergyParams{kRatio, 0, 0.9}, 48 * 1024, EnergyKernel::BlockMap);
  check_truncated<double>(2, 2, 13, 40, EnergyParams{kCount, 5, 0.0}, 48 * 1024, EnergyKernel::BlockMap);
  check_truncated<double>(2, 2, 20, 17, EnergyParams{kRatio, 0, 0.5}, 1024, EnergyKernel::BlockMapGlobal);
  check_truncated<float>(2, 3, 20, 17, EnergyParams{kRatio, 0, 0.9}, 48 * 1024, EnergyKernel::BlockMap);
  check_truncated<float>(2, 2, 13, 40, EnergyParams{kCount, 5, 0.0}, 48 * 1024, EnergyKernel::BlockMap);
  check_truncated<float>(2, 2, 20, 17, EnergyParams{kRatio, 0, 0.5}, 1024, EnergyKernel::BlockMapGlobal);
  check_truncated<float>(1, 2, 56, 56, EnergyParams{kCount, 20, 0.0}, 48 * 1024, EnergyKernel::BlockMap);
  check_truncated<float>(1, 2, 24, 21, EnergyParams{kCount, 4, 0.0}, 48 * 1024, EnergyKernel::BlockMap, 1e18);
  check_truncated<float>(1, 2, 24, 21, EnergyParams{kCount, 4, 0.0}, 48 * 1024, EnergyKernel::BlockMap, 1e-20);
  for (Kind kind : {Kind::LowRank, Kind::Offset, Kind::ConstantColumns}) {
    check_truncated<float>(2, 3, 14, 14, EnergyParams{kRatio, 0, 0.95}, 48 * 1024, EnergyKernel::BlockMap, 1.0, kind);
    check_truncated<float>(1, 2, 40, 33, EnergyParams{kCount, 3, 0.0}, 48 * 1024, EnergyKernel::BlockMap, 1.0, kind);
    check_truncated<double>(1, 2, 20, 17, EnergyParams{kRatio, 0, 0.9}, 48 * 1024, EnergyKernel::BlockMap, 1.0, kind);
  }
  for (Kind kind : {Kind::Sparse, Kind::ZeroRowsCols}) {  // the exact-zero structure of post-ReLU maps
    check_truncated<float>(4, 8, 32, 32, EnergyParams{kRatio, 0, 0.95}, 48 * 1024, EnergyKernel::BlockMap, 1.0, kind);
    check_truncated<float>(4, 8, 16, 16, EnergyParams{kCount, 3, 0.0}, 48 * 1024, EnergyKernel::BlockMap, 1.0, kind);
    check_truncated<float>(2, 8, 8, 8, EnergyParams{kRatio, 0, 0.5}, 48 * 1024, EnergyKernel::BlockMap, 1.0, kind);
    check_truncated<double>(4, 8, 32, 32, EnergyParams{kRatio, 0, 0.95}, 48 * 1024, EnergyKernel::BlockMap, 1.0, kind);
    check_truncated<double>(2, 4, 20, 17, EnergyParams{kCount, 3, 0.0}, 1024, EnergyKernel::BlockMapGlobal, 1.0, kind);
  }
  check_truncated<float>(1, 2, 56, 56, EnergyParams{kRatio, 0, 0.95}, 48 * 1024, EnergyKernel::BlockMap, 1.0,
                         Kind::Normal, 32);
  check_truncated<double>(1, 2, 20, 17, EnergyParams{kCount, 6, 0.0}, 1024, EnergyKernel::BlockMapGlobal, 1.0,
                          Kind::Normal, 32);
  {  // maps far beyond shared memory: the global workspace stays within its bound
    MapBatch big{};
    big.dtype = kFloat32, big.n = 64, big.c = 512, big.h = 1000, big.w = 1000;
    big.sn = 512000000, big.sc = 1000000, big.sh = 1000, big.sw = 1;
    const EnergyPlan plan = plan_energies(big, EnergyParams{kRatio, 0, 0.9}, 132, 227 * 1024);
    expect(plan.kernel == EnergyKernel::BlockMapGlobal && plan.blocks >= 1 &&
               plan.ws_bytes <= kMaxWorkspace && plan.ws_bytes == size_t(plan.blocks) * size_t(block_buffer_bytes<float>(1000, 1000)),
           "plan: 1000x1000 maps get " + std::to_string(plan.blocks) + " blocks, " + std::to_string(plan.ws_bytes) + " bytes");
  }
  check_merge();
  if (failures) {
    std::printf("%d failure(s)\n", failures);
    return 1;
  }
  std::printf("all emulated kernel checks passed\n");
  return 0;
}
