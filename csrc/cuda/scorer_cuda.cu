// CUDA core, host side: device lookups, launches and temporaries.  The
// kernels are in kernels/ and the launch plan in plan.cuh (gathered by kernels.cuh).  Everything is ordered on
// the caller's stream; temporaries come from cudaMallocAsync on that stream,
// so the host never waits.
#include "scorer_cuda.h"

#include "kernels.cuh"

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

// Returns true when `out` holds sums of squares whose square root is left to
// the caller (the None path inside accumulate, fused into merge_kernel).
template <typename T>
bool launch_energies(const MapBatch& x, const EnergyParams& p, double* out, cudaStream_t stream,
                     bool defer_sqrt, const DeviceInfo& info) {
  const EnergyPlan plan = plan_energies(x, p, info.sms, info.smem_optin);
  switch (plan.kernel) {
    case EnergyKernel::ChannelsInner:
      channels_inner_kernel<T><<<plan.blocks, plan.threads, 0, stream>>>(x, plan.split, out);
      break;
    case EnergyKernel::ColumnsInner:
      columns_inner_kernel<T><<<plan.blocks, plan.threads, 0, stream>>>(x, out);
      break;
    case EnergyKernel::BlockMap:
      check(cudaFuncSetAttribute(block_map_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 int(plan.smem_bytes)),
            "shared memory opt-in");
      block_map_kernel<T><<<plan.blocks, plan.threads, plan.smem_bytes, stream>>>(x, p, out, nullptr,
                                                                                   plan.rel_tol);
      break;
    case EnergyKernel::BlockMapGlobal: {
      double* ws = nullptr;
      check(cudaMallocAsync(reinterpret_cast<void**>(&ws), plan.ws_bytes, stream), "workspace");
      block_map_kernel<T><<<plan.blocks, plan.threads, 0, stream>>>(x, p, out, ws, plan.rel_tol);
      const cudaError_t launch = cudaGetLastError();
      check(cudaFreeAsync(ws, stream), "workspace free");
      check(launch, "block_map_kernel (global workspace)");
      break;
    }
  }
  check(cudaGetLastError(), "energy kernel");
  if (!plan.sums || defer_sqrt) return plan.sums;
  const int64_t maps = x.n * x.c;
  sqrt_kernel<<<int((maps + 255) / 256), 256, 0, stream>>>(out, maps);
  check(cudaGetLastError(), "sqrt_kernel");
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
  // one temporary: the batch's energies, then its per-channel mean and M2
  double* f = nullptr;
  check(cudaMallocAsync(reinterpret_cast<void**>(&f), size_t(nf + 2 * x.c) * sizeof(double), stream),
        "temporary");
  try {
    const bool sums = dispatch_energies(x, p, f, stream, true, info);
    merge_kernel<<<merge_blocks(x.c), kMergeThreads, 0, stream>>>(f, x.n, x.c, sums, f + nf, f + nf + x.c, count,
                                                                  mean, m2, status);
    check(cudaGetLastError(), "merge_kernel");
  } catch (...) {
    cudaFreeAsync(f, stream);
    throw;
  }
  check(cudaFreeAsync(f, stream), "temporary free");
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
