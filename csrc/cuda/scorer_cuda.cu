// CUDA core.  Three kernels compute per-map energies, picked by mode and size:
//
//   all_columns_kernel   n_components=None: one thread per map column, one pass,
//                        coalesced for NCHW and channels_last alike.
//   small_map_kernel     truncated, maps of at most 256 elements: one thread per
//                        map running the shared header's sequential map_energy.
//   block_map_kernel     truncated, larger maps: one block per map; Gram and
//                        Householder steps spread over the block, then every
//                        eigenvalue found at once by Sturm bisection (one thread
//                        per eigenvalue).  The map and Gram sit in shared memory
//                        up to the device's opt-in limit (112x112 fits on Hopper);
//                        beyond it the same kernel works in a global workspace.
//
// Everything is ordered on the caller's stream; temporaries come from
// cudaMallocAsync on that stream, so the host never waits.
#include "scorer_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace ocnna {
namespace cuda {
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("ocnna-fast CUDA: ") + what + ": " + cudaGetErrorString(err));
}

// Device attributes, looked up once per device: the hooks call into this core
// for every conv of every batch, so per-call host work is kept to launches.
struct DeviceInfo {
  int sms = 0;
  int smem_optin = 0;
};

const DeviceInfo& device_info(int dev) {
  static DeviceInfo cache[64];
  if (dev < 0 || dev >= 64) throw std::invalid_argument("device index out of range");
  DeviceInfo& d = cache[dev];
  if (d.sms == 0) {
    int sms = 1, optin = 0;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "device attribute");
    check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "device attribute");
    d.smem_optin = optin;
    d.sms = sms;  // written last: marks the entry filled
  }
  return d;
}

// Makes `dev` current for the scope (the caller's stream lives there) and
// puts the previous device back, so callers need no device context.
class DeviceGuard {
 public:
  explicit DeviceGuard(int dev) {
    check(cudaGetDevice(&prev_), "cudaGetDevice");
    if (dev >= 0 && dev != prev_) check(cudaSetDevice(dev), "cudaSetDevice");
    dev_ = dev >= 0 ? dev : prev_;
  }
  ~DeviceGuard() {
    if (dev_ != prev_) cudaSetDevice(prev_);
  }
  int device() const { return dev_; }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0, dev_ = 0;
};

// ------------------------------------------------------------------ loads --
template <typename T>
__device__ __forceinline__ double ld(const T* p) {
  return to_double(*p);
}

// ------------------------------------------------- n_components = None ----
// Thread t handles up to kChunk columns of map (i, c) and adds their centred
// sums of squares into acc[i * C + c] (one atomic per thread).  The index
// order puts channels innermost for channels_last input (consecutive threads
// read consecutive channels) and columns innermost otherwise (then a thread
// takes one column, so a warp reads a contiguous run of a row).  Rows are
// unrolled by four with independent partial sums, so each thread keeps four
// loads in flight.  A non-finite value anywhere turns the sum into NaN.
constexpr int kChunk = 8;

template <typename T>
__device__ __forceinline__ double column_ss(const T* col, int64_t h, int64_t sh, double& poison) {
  const double x0 = ld(col);
  double a1 = 0.0, a2 = 0.0, b1 = 0.0, b2 = 0.0, c1 = 0.0, c2 = 0.0, d1 = 0.0, d2 = 0.0;
  int64_t y = 1;
  for (; y + 3 < h; y += 4) {
    const double u = ld(col + y * sh) - x0, v = ld(col + (y + 1) * sh) - x0;
    const double w = ld(col + (y + 2) * sh) - x0, z = ld(col + (y + 3) * sh) - x0;
    a1 += u;
    a2 += u * u;
    b1 += v;
    b2 += v * v;
    c1 += w;
    c2 += w * w;
    d1 += z;
    d2 += z * z;
  }
  for (; y < h; ++y) {
    const double u = ld(col + y * sh) - x0;
    a1 += u;
    a2 += u * u;
  }
  const double s1 = (a1 + b1) + (c1 + d1), s2 = (a2 + b2) + (c2 + d2);
  poison += s2 - s2 + x0 - x0;  // 0, or NaN for non-finite input
  return centred_ss_from_shifted(s1, s2, double(h));
}

// channels_last: kChunk neighbouring columns of one map, walked two rows at a
// time so each thread has 2 * kChunk independent loads in flight (a warp reads
// 2 * kChunk 128-byte runs of channels).  Same per-column arithmetic as
// column_ss, summed in row order.
template <typename T>
__device__ __forceinline__ double chunk_ss(const T* base, int64_t h, int64_t sh, int64_t sw, double& poison) {
  // the first row, kept exactly in the narrowest type (fewer registers, more loads in flight)
  using P = typename ExactFloat<T>::type;
  P x0[kChunk];
  double s1[kChunk], s2[kChunk];
#pragma unroll
  for (int j = 0; j < kChunk; ++j) {
    x0[j] = P(ld(base + j * sw));
    s1[j] = 0.0;
    s2[j] = 0.0;
  }
  int64_t y = 1;
  for (; y + 1 < h; y += 2) {
    const T* r0 = base + y * sh;
    const T* r1 = r0 + sh;
    T a[kChunk], b[kChunk];  // raw loads: converted only when used
#pragma unroll
    for (int j = 0; j < kChunk; ++j) {
      a[j] = r0[j * sw];
      b[j] = r1[j * sw];
    }
#pragma unroll
    for (int j = 0; j < kChunk; ++j) {
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
    for (int j = 0; j < kChunk; ++j) {
      const double u = ld(r0 + j * sw) - double(x0[j]);
      s1[j] += u;
      s2[j] += u * u;
    }
  }
  double ss = 0.0;
#pragma unroll
  for (int j = 0; j < kChunk; ++j) {
    poison += s2[j] - s2[j] + double(x0[j]) - double(x0[j]);
    ss += centred_ss_from_shifted(s1[j], s2[j], double(h));
  }
  return ss;
}

template <typename T>
__global__ void all_columns_kernel(MapBatch x, bool channels_inner, double* acc) {
  const int64_t chunks = channels_inner ? (x.w + kChunk - 1) / kChunk : x.w;
  const int64_t width = channels_inner ? kChunk : 1;
  const int64_t total = x.n * x.c * chunks;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total;
       t += int64_t(gridDim.x) * blockDim.x) {
    int64_t i, c, k;
    if (channels_inner) {
      c = t % x.c;
      k = (t / x.c) % chunks;
      i = t / (x.c * chunks);
    } else {
      k = t % chunks;
      c = (t / chunks) % x.c;
      i = t / (chunks * x.c);
    }
    const int64_t x_begin = k * width;
    const int64_t x_end = x_begin + width < x.w ? x_begin + width : x.w;
    const T* base = static_cast<const T*>(x.data) + x.offset(i, c, 0, 0);
    double ss = 0.0, poison = 0.0;
    if (x_end - x_begin == kChunk) {
      ss = chunk_ss(base + x_begin * x.sw, x.h, x.sh, x.sw, poison);
    } else {
      for (int64_t xx = x_begin; xx < x_end; ++xx) ss += column_ss(base + xx * x.sw, x.h, x.sh, poison);
    }
    atomicAdd(acc + i * x.c + c, ss + poison);
  }
}

__global__ void sqrt_kernel(double* v, int64_t n) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t < n) v[t] = sqrt(v[t]);
}

// --------------------------------------------- truncated, small maps ----
constexpr int kSmallElems = 256;  // h * w limit of the thread-per-map path
constexpr int kSmallDim = 16;     // so min(h, w) <= 16

template <typename T>
__global__ void small_map_kernel(MapBatch x, EnergyParams p, double* out) {
  double buf[kSmallElems * 2 + kSmallDim * kSmallDim + 4 * kSmallDim];  // map + map_energy scratch
  const int h = int(x.h), w = int(x.w);
  const int64_t maps = x.n * x.c;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < maps;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = t / x.c, c = t % x.c;
    const T* src = static_cast<const T*>(x.data) + x.offset(i, c, 0, 0);
    for (int y = 0; y < h; ++y)
      for (int xx = 0; xx < w; ++xx) buf[y * w + xx] = ld(src + y * x.sh + xx * x.sw);
    out[t] = map_energy(buf, h, w, p, buf + h * w);
  }
}

// --------------------------------------------- truncated, block per map --
__device__ double block_sum(double v, double* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  double s = 0.0;
  const int warps = (blockDim.x + 31) >> 5;
  for (int k = 0; k < warps; ++k) s += red[k];  // same order in every thread
  return s;
}

// Doubles of working memory one map needs in block_map_kernel.
__host__ __device__ int64_t block_buffer_size(int64_t h, int64_t w) {
  const int64_t d = h < w ? h : w;
  return h * w + d * d + 4 * d + 40;
}

template <typename T>
__global__ void block_map_kernel(MapBatch x, EnergyParams p, double* out, double* global_ws,
                                 double rel_tol) {
  extern __shared__ double smem[];
  const int h = int(x.h), w = int(x.w), d = h < w ? h : w;
  double* map = global_ws ? global_ws + blockIdx.x * block_buffer_size(h, w) : smem;
  double* gram = map + h * w;
  double* v = gram + d * d;
  double* wv = v + d;
  double* diag = wv + d;
  double* off = diag + d;
  double* red = off + d;  // 32 slots for reductions, then scalars
  const int tid = threadIdx.x, nt = blockDim.x;

  for (int64_t t = blockIdx.x; t < x.n * x.c; t += gridDim.x) {
    const int64_t i = t / x.c, c = t % x.c;
    const T* src = static_cast<const T*>(x.data) + x.offset(i, c, 0, 0);
    for (int e = tid; e < h * w; e += nt) {
      const int y = e / w, xx = e % w;
      map[e] = ld(src + y * x.sh + xx * x.sw);
    }
    __syncthreads();
    // centre each column (same arithmetic as centre_columns)
    for (int xx = tid; xx < w; xx += nt) {
      const double shift = map[xx];
      double s = 0.0;
      for (int y = 1; y < h; ++y) s += map[y * w + xx] - shift;
      const double sub = (s == 0.0) ? shift : shift + s / h;
      for (int y = 0; y < h; ++y) map[y * w + xx] -= sub;
    }
    __syncthreads();
    double part = 0.0;
    for (int e = tid; e < h * w; e += nt) part += map[e] * map[e];
    const double total = block_sum(part, red);
    if (!is_finite(total) || total == 0.0 || !needs_eigen(p, h, w)) {
      if (tid == 0) out[t] = is_finite(total) ? sqrt(total) : NAN;
      __syncthreads();
      continue;
    }
    // Gram of the smaller side, scaled to unit trace
    const double inv = 1.0 / total;
    for (int e = tid; e < d * d; e += nt) {
      const int a = e / d, b = e % d;
      if (b < a) continue;
      double s = 0.0;
      if (w <= h) {
        for (int y = 0; y < h; ++y) s += map[y * w + a] * map[y * w + b];
      } else {
        for (int xx = 0; xx < w; ++xx) s += map[a * w + xx] * map[b * w + xx];
      }
      gram[a * d + b] = s * inv;
      gram[b * d + a] = s * inv;
    }
    __syncthreads();
    // Householder tridiagonalisation, one reflector per step (as tridiagonalize)
    for (int k = 0; k + 2 < d; ++k) {
      const int m = d - k - 1;
      const double* row = gram + k * d + (k + 1);
      double np = 0.0;
      for (int e = tid; e < m; e += nt) {
        v[e] = row[e];
        np += row[e] * row[e];
      }
      const double norm2 = block_sum(np, red);
      if (tid == 0) diag[k] = gram[k * d + k];
      if (norm2 == 0.0) {
        if (tid == 0) off[k] = 0.0;
        __syncthreads();
        continue;
      }
      const double v0 = v[0];
      const double alpha = (v0 > 0.0) ? -sqrt(norm2) : sqrt(norm2);
      const double beta = 2.0 / (2.0 * (norm2 - alpha * v0));
      __syncthreads();
      if (tid == 0) {
        off[k] = alpha;
        v[0] = v0 - alpha;
      }
      __syncthreads();
      double vwp = 0.0;
      for (int r = tid; r < m; r += nt) {
        const double* br = gram + (k + 1 + r) * d + (k + 1);
        double s = 0.0;
        for (int j = 0; j < m; ++j) s += br[j] * v[j];
        wv[r] = beta * s;
        vwp += v[r] * wv[r];
      }
      const double hh = 0.5 * beta * block_sum(vwp, red);
      for (int r = tid; r < m; r += nt) wv[r] -= hh * v[r];
      __syncthreads();
      for (int e = tid; e < m * m; e += nt) {
        const int r = e / m, j = e % m;
        gram[(k + 1 + r) * d + (k + 1 + j)] -= v[r] * wv[j] + wv[r] * v[j];
      }
      __syncthreads();
    }
    if (tid == 0) {
      if (d >= 2) {
        diag[d - 2] = gram[(d - 2) * d + (d - 2)];
        off[d - 2] = gram[(d - 2) * d + (d - 1)];
      }
      diag[d - 1] = gram[(d - 1) * d + (d - 1)];
      off[d - 1] = 0.0;
      double lo, hi;
      gershgorin_bounds(diag, off, d, &lo, &hi);
      red[32] = lo;
      red[33] = hi;
    }
    __syncthreads();
    // every eigenvalue at once, already in descending order by index
    const double lo = red[32], hi = red[33];
    const double tol = rel_tol * fmax(fabs(lo), fabs(hi));
    double* eig = v;  // the reflector is no longer needed
    for (int k = tid; k < d; k += nt) eig[k] = tridiagonal_kth_largest(diag, off, d, k, lo, hi, tol);
    __syncthreads();
    if (tid == 0) out[t] = sqrt(kept_energy(eig, d, p) * total);
    __syncthreads();
  }
}

// ------------------------------------------------------- accumulation --
// One pass over the batch's energies: finish them (the None path leaves sums
// of squares, so the square root is taken here) and flag the first channel
// holding a non-finite value.  One thread per energy.
__global__ void finish_kernel(double* f, int64_t n, int64_t c, bool take_sqrt, unsigned long long* first_bad) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n * c;
       t += int64_t(gridDim.x) * blockDim.x) {
    double v = f[t];
    if (take_sqrt) {
      v = sqrt(v);
      f[t] = v;
    }
    if (!is_finite(v)) atomicMin(first_bad, static_cast<unsigned long long>(t % c));
  }
}

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;  // every lane holds the total
}

// One warp per channel: the batch's (mean, M2) by two passes over its n
// energies, then the Chan merge into the running accumulators.  Nothing is
// merged for a flagged batch; the first offender is remembered in *status.
__global__ void merge_kernel(const double* f, int64_t n, int64_t c, const unsigned long long* first_bad,
                             double* count, double* mean, double* m2, int64_t* status) {
  const int lane = threadIdx.x & 31;
  const int64_t ch = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5;
  if (ch >= c) return;  // the whole warp leaves together
  const unsigned long long bad = *first_bad;
  if (bad != ~0ull) {
    if (ch == 0 && lane == 0 && *status < 0) *status = static_cast<int64_t>(bad);
    return;
  }
  double s = 0.0;
  for (int64_t i = lane; i < n; i += 32) s += f[i * c + ch];
  const double mb = warp_sum(s) / double(n);
  double q = 0.0;
  for (int64_t i = lane; i < n; i += 32) {
    const double d = f[i * c + ch] - mb;
    q += d * d;
  }
  q = warp_sum(q);
  if (lane == 0) chan_merge(count[ch], mean[ch], m2[ch], double(n), mb, q);
}

// Returns true when `out` holds sums of squares whose square root is left to
// the caller (the None path inside accumulate, fused into finish_kernel).
template <typename T>
bool launch_energies(const MapBatch& x, const EnergyParams& p, double* out, cudaStream_t stream,
                     bool defer_sqrt, const DeviceInfo& info) {
  const int64_t maps = x.n * x.c;
  const int h = int(x.h), w = int(x.w);
  const int sms = info.sms;
  if (!needs_eigen(p, h, w)) {
    check(cudaMemsetAsync(out, 0, size_t(maps) * sizeof(double), stream), "memset");
    const bool channels_inner = (x.sc < 0 ? -x.sc : x.sc) < (x.sw < 0 ? -x.sw : x.sw);
    const int64_t threads = maps * (channels_inner ? (x.w + kChunk - 1) / kChunk : x.w);
    const int blocks = int(std::min<int64_t>((threads + 255) / 256, int64_t(sms) * 32));
    all_columns_kernel<T><<<blocks, 256, 0, stream>>>(x, channels_inner, out);
    check(cudaGetLastError(), "all_columns_kernel");
    if (defer_sqrt) return true;
    sqrt_kernel<<<int((maps + 255) / 256), 256, 0, stream>>>(out, maps);
    check(cudaGetLastError(), "sqrt_kernel");
    return false;
  }
  const int d = std::min(h, w);
  if (int64_t(h) * w <= kSmallElems && d <= kSmallDim) {
    const int blocks = int(std::min<int64_t>((maps + 63) / 64, int64_t(sms) * 16));
    small_map_kernel<T><<<blocks, 64, 0, stream>>>(x, p, out);
    check(cudaGetLastError(), "small_map_kernel");
    return false;
  }
  const int threads = d <= 32 ? 64 : (d <= 64 ? 128 : 256);
  // Bisection stops at this width relative to the spectrum (trace 1): about
  // 1e-9 for inputs of float precision (SPEC allows 1e-4; this leaves the
  // error in F near 1e-8), machine precision for float64 input.
  const double rel_tol = x.dtype == kFloat64 ? 2e-16 : 1e-9;
  const size_t bytes = size_t(block_buffer_size(h, w)) * sizeof(double);
  if (bytes <= size_t(info.smem_optin)) {
    check(cudaFuncSetAttribute(block_map_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
          "shared memory opt-in");
    const int blocks = int(std::min<int64_t>(maps, int64_t(sms) * 64));
    block_map_kernel<T><<<blocks, threads, bytes, stream>>>(x, p, out, nullptr, rel_tol);
    check(cudaGetLastError(), "block_map_kernel");
    return false;
  }
  // too large for shared memory: one global slice per block
  const int blocks = int(std::min<int64_t>(maps, int64_t(sms) * 4));
  double* ws = nullptr;
  check(cudaMallocAsync(reinterpret_cast<void**>(&ws), bytes * size_t(blocks), stream), "workspace");
  block_map_kernel<T><<<blocks, threads, 0, stream>>>(x, p, out, ws, rel_tol);
  const cudaError_t launch = cudaGetLastError();
  check(cudaFreeAsync(ws, stream), "workspace free");
  check(launch, "block_map_kernel (global workspace)");
  return false;
}

bool dispatch_energies(const MapBatch& x, const EnergyParams& p, double* out, cudaStream_t stream,
                       bool defer_sqrt, const DeviceInfo& info) {
  if (x.h <= 0 || x.w <= 0) throw std::invalid_argument("maps must have H >= 1 and W >= 1");
  switch (x.dtype) {
    case kFloat32: return launch_energies<float>(x, p, out, stream, defer_sqrt, info);
    case kFloat64: return launch_energies<double>(x, p, out, stream, defer_sqrt, info);
    case kFloat16: return launch_energies<Half16>(x, p, out, stream, defer_sqrt, info);
    case kBFloat16: return launch_energies<BFloat16>(x, p, out, stream, defer_sqrt, info);
    default: throw std::invalid_argument("unsupported dtype code");
  }
}

}  // namespace

void energies(const MapBatch& x, const EnergyParams& p, double* out, void* stream_ptr, int device) {
  if (x.n <= 0 || x.c <= 0) return;
  DeviceGuard guard(device);
  dispatch_energies(x, p, out, static_cast<cudaStream_t>(stream_ptr), false, device_info(guard.device()));
}

// The per-batch temporaries come from the device's default memory pool.  Its
// default release threshold (0) hands memory back to the driver at every
// synchronisation, making the next cudaMallocAsync slow; keep it instead.
void keep_pool_memory(int dev) {
  static bool done[64] = {false};
  if (dev < 0 || dev >= 64 || done[dev]) return;
  cudaMemPool_t pool;
  check(cudaDeviceGetDefaultMemPool(&pool, dev), "default memory pool");
  uint64_t keep = ~0ull;
  check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), "pool threshold");
  done[dev] = true;
}

void accumulate(const MapBatch& x, const EnergyParams& p, double* count, double* mean, double* m2,
                int64_t* status, void* stream_ptr, int device) {
  if (x.n <= 0 || x.c <= 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  DeviceGuard guard(device);
  const DeviceInfo& info = device_info(guard.device());
  keep_pool_memory(guard.device());
  const int64_t nf = x.n * x.c;
  // one temporary: the batch's energies, then the first-bad-channel flag
  char* tmp = nullptr;
  const size_t fbytes = size_t(nf) * sizeof(double);
  check(cudaMallocAsync(reinterpret_cast<void**>(&tmp), fbytes + sizeof(unsigned long long), stream),
        "temporary");
  double* f = reinterpret_cast<double*>(tmp);
  auto* first_bad = reinterpret_cast<unsigned long long*>(tmp + fbytes);
  try {
    const bool sums = dispatch_energies(x, p, f, stream, true, info);
    check(cudaMemsetAsync(first_bad, 0xff, sizeof(unsigned long long), stream), "memset");
    const int fblocks = int(std::min<int64_t>((nf + 255) / 256, int64_t(info.sms) * 8));
    finish_kernel<<<fblocks, 256, 0, stream>>>(f, x.n, x.c, sums, first_bad);
    check(cudaGetLastError(), "finish_kernel");
    const int mblocks = int((x.c * 32 + 255) / 256);
    merge_kernel<<<mblocks, 256, 0, stream>>>(f, x.n, x.c, first_bad, count, mean, m2, status);
    check(cudaGetLastError(), "merge_kernel");
  } catch (...) {
    cudaFreeAsync(tmp, stream);
    throw;
  }
  check(cudaFreeAsync(tmp, stream), "temporary free");
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

int runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

}  // namespace cuda
}  // namespace ocnna
