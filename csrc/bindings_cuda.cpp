// Python binding of the CUDA core: device addresses and a cudaStream_t handle
// arrive as integers (torch's data_ptr() and Stream.cuda_stream), so this
// module does not link libtorch.  It links the static CUDA runtime, which
// loads the driver lazily: importing it needs no GPU.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <stdexcept>

#include "common/call_args.h"
#include "common/map_batch.h"
#include "cuda/scorer_cuda.h"

namespace py = pybind11;
using ocnna::EnergyParams;
using ocnna::make_batch;
using ocnna::make_params;
using ocnna::MapBatch;

namespace {

template <typename P>
P* as_ptr(uintptr_t v, const char* what) {
  if (v == 0) throw std::invalid_argument(std::string(what) + " is a null pointer");
  return reinterpret_cast<P*>(v);
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "ocnna-fast CUDA core (framework-free)";

  m.def(
      "energies",
      [](uintptr_t ptr, int dtype, std::array<int64_t, 4> shape, std::array<int64_t, 4> strides,
         int mode, int q, double tau, uintptr_t out, uintptr_t stream, int device) {
        const MapBatch x = make_batch(ptr, dtype, shape, strides);
        const EnergyParams p = make_params(mode, q, tau);
        if (p.mode == ocnna::kRank)
          throw std::invalid_argument("the rank statistic runs on the CPU core only");
        double* o = as_ptr<double>(out, "out");
        py::gil_scoped_release nogil;
        ocnna::cuda::energies(x, p, o, reinterpret_cast<void*>(stream), device);
      },
      py::arg("ptr"), py::arg("dtype"), py::arg("shape"), py::arg("strides"), py::arg("mode"),
      py::arg("q"), py::arg("tau"), py::arg("out"), py::arg("stream"), py::arg("device") = -1,
      "Per-map energies into the float64 device buffer at `out` (N*C), on `stream` of `device` "
      "(-1: the current device).");

  m.def(
      "accumulate",
      [](uintptr_t ptr, int dtype, std::array<int64_t, 4> shape, std::array<int64_t, 4> strides,
         int mode, int q, double tau, uintptr_t count, uintptr_t mean, uintptr_t m2, uintptr_t status,
         uintptr_t stream, int device) {
        const MapBatch x = make_batch(ptr, dtype, shape, strides);
        const EnergyParams p = make_params(mode, q, tau);
        if (p.mode == ocnna::kRank)
          throw std::invalid_argument("the rank statistic runs on the CPU core only");
        double* cnt = as_ptr<double>(count, "count");
        double* mu = as_ptr<double>(mean, "mean");
        double* q2 = as_ptr<double>(m2, "m2");
        int64_t* st = as_ptr<int64_t>(status, "status");
        py::gil_scoped_release nogil;
        ocnna::cuda::accumulate(x, p, cnt, mu, q2, st, reinterpret_cast<void*>(stream), device);
      },
      py::arg("ptr"), py::arg("dtype"), py::arg("shape"), py::arg("strides"), py::arg("mode"),
      py::arg("q"), py::arg("tau"), py::arg("count"), py::arg("mean"), py::arg("m2"), py::arg("status"),
      py::arg("stream"), py::arg("device") = -1,
      "Fold a batch into per-channel device accumulators, asynchronously on `stream` of `device` "
      "(-1: the current device).");

  m.def("device_count", &ocnna::cuda::device_count, "CUDA devices visible (0 without a driver).");
  m.def("runtime_version", &ocnna::cuda::runtime_version, "CUDA runtime version the core was built with.");
}
