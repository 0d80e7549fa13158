// Python binding of the CPU core.  Activations arrive as a raw address plus
// shape and element strides (from torch's data_ptr()/stride() or NumPy), so
// nothing here knows about torch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>
#include <stdexcept>

#include "common/call_args.h"
#include "common/map_batch.h"
#include "cpu/parallel.h"
#include "cpu/ql_lanes.h"
#include "cpu/scorer_cpu.h"

namespace py = pybind11;
using ocnna::EnergyParams;
using ocnna::make_batch;
using ocnna::make_params;
using ocnna::MapBatch;

namespace {

// c_style without forcecast: a mismatching array is an error, never a
// silent copy whose writes would be lost.
using Arr = py::array_t<double, py::array::c_style>;


double* writable(Arr& a, int64_t size, const char* what) {
  if (a.size() != size) throw std::invalid_argument(std::string(what) + " has the wrong size");
  return a.mutable_data();
}

}  // namespace

#ifndef OCNNA_MODULE
#define OCNNA_MODULE _C
#endif
#ifndef OCNNA_ISA
#define OCNNA_ISA "unspecified"
#endif

// Whether this CPU (and its OS) runs an instruction-set extension, by GCC's
// name for it; false off x86 and for names not listed.
// __builtin_cpu_supports takes a literal, hence one comparison per name.
static bool cpu_supports(const std::string& feature) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
#define OCNNA_ASK(name) \
  if (feature == name) return __builtin_cpu_supports(name);
  OCNNA_ASK("avx") OCNNA_ASK("avx2") OCNNA_ASK("fma") OCNNA_ASK("bmi") OCNNA_ASK("bmi2") OCNNA_ASK("f16c")
  OCNNA_ASK("avx512f") OCNNA_ASK("avx512bw") OCNNA_ASK("avx512cd") OCNNA_ASK("avx512dq") OCNNA_ASK("avx512vl")
#undef OCNNA_ASK
#endif
  (void)feature;
  return false;
}

PYBIND11_MODULE(OCNNA_MODULE, m) {
  m.attr("ISA") = py::str(OCNNA_ISA);  // the instruction set this module was compiled for
  m.def("cpu_supports", &cpu_supports, py::arg("feature"),
        "Whether this CPU and OS run an instruction-set extension (GCC's name: avx2, fma, avx512f, ...).");
  m.attr("INTERNAL_FLAG") = py::int_(ocnna::kInternalFlag);  // accumulate: a failed solve, not bad input
  // the codes of ocnna_math.h's enums, so Python never copies them by hand
  m.attr("DTYPE_FLOAT32") = py::int_(int(ocnna::kFloat32));
  m.attr("DTYPE_FLOAT64") = py::int_(int(ocnna::kFloat64));
  m.attr("DTYPE_FLOAT16") = py::int_(int(ocnna::kFloat16));
  m.attr("DTYPE_BFLOAT16") = py::int_(int(ocnna::kBFloat16));
  m.attr("MODE_ALL") = py::int_(int(ocnna::kAll));
  m.attr("MODE_COUNT") = py::int_(int(ocnna::kCount));
  m.attr("MODE_RATIO") = py::int_(int(ocnna::kRatio));
  m.attr("MODE_RANK") = py::int_(int(ocnna::kRank));
  m.doc() = "ocnna-fast CPU core (framework-free)";

  m.def(
      "energies",
      [](uintptr_t ptr, int dtype, std::array<int64_t, 4> shape, std::array<int64_t, 4> strides,
         int mode, int q, double tau, Arr out) {
        const MapBatch x = make_batch(ptr, dtype, shape, strides);
        const EnergyParams p = make_params(mode, q, tau);
        double* o = writable(out, x.n * x.c, "out");
        py::gil_scoped_release nogil;
        ocnna::cpu::energies(x, p, o);
      },
      py::arg("ptr"), py::arg("dtype"), py::arg("shape"), py::arg("strides"), py::arg("mode"),
      py::arg("q"), py::arg("tau"), py::arg("out"),
      "Per-map energies F[n, c] into out (float64, N*C).");

  m.def(
      "accumulate",
      [](uintptr_t ptr, int dtype, std::array<int64_t, 4> shape, std::array<int64_t, 4> strides,
         int mode, int q, double tau, Arr count, Arr mean, Arr m2) -> int64_t {
        const MapBatch x = make_batch(ptr, dtype, shape, strides);
        const EnergyParams p = make_params(mode, q, tau);
        double* cnt = writable(count, x.c, "count");
        double* mu = writable(mean, x.c, "mean");
        double* q2 = writable(m2, x.c, "m2");
        py::gil_scoped_release nogil;
        return ocnna::cpu::accumulate(x, p, cnt, mu, q2);
      },
      py::arg("ptr"), py::arg("dtype"), py::arg("shape"), py::arg("strides"), py::arg("mode"),
      py::arg("q"), py::arg("tau"), py::arg("count"), py::arg("mean"), py::arg("m2"),
      "Fold a batch into per-channel (count, mean, m2); returns -1, or the first channel with a "
      "non-finite map, or INTERNAL_FLAG + the channel whose eigen-solve failed (then nothing is "
      "changed).");

  m.def(
      "merge",
      [](Arr count, Arr mean, Arr m2, Arr count_b, Arr mean_b, Arr m2_b) {
        const int64_t c = mean.size();
        double* n_a = writable(count, c, "count");
        double* mu_a = writable(mean, c, "mean");
        double* q_a = writable(m2, c, "m2");
        const double* n_b = writable(count_b, c, "count_b");
        const double* mu_b = writable(mean_b, c, "mean_b");
        const double* q_b = writable(m2_b, c, "m2_b");
        for (int64_t i = 0; i < c; ++i) ocnna::chan_merge(n_a[i], mu_a[i], q_a[i], n_b[i], mu_b[i], q_b[i]);
      },
      py::arg("count"), py::arg("mean"), py::arg("m2"), py::arg("count_b"), py::arg("mean_b"),
      py::arg("m2_b"), "Chan merge of accumulators b into a, in place.");

  m.def(
      "_tridiagonal_eigenvalues",
      [](Arr diag, Arr off, const std::string& method) {
        const int d = int(diag.size());
        if (d < 1 || off.size() != d) throw std::invalid_argument("need d >= 1 diag and d off entries");
        std::vector<double> dg(diag.data(), diag.data() + d), of(off.data(), off.data() + d);
        Arr out(d);
        double* o = out.mutable_data();
        if (method == "ql") {
          if (!ocnna::tridiagonal_eigenvalues(dg.data(), of.data(), d)) throw std::runtime_error("no convergence");
          ocnna::sort_descending(dg.data(), d);
          std::copy(dg.begin(), dg.end(), o);
        } else if (method == "bisection" || method == "multisection") {
          double lo, hi;
          ocnna::gershgorin_bounds(dg.data(), of.data(), d, &lo, &hi);
          const double tol = 2e-16 * std::max(std::fabs(lo), std::fabs(hi));
          const int g = method == "bisection" ? 1 : 2;  // two points per step, as the CUDA core at 56x56
          for (int k = 0; k < d; ++k)
            o[k] = ocnna::tridiagonal_kth_largest(dg.data(), of.data(), d, k, lo, hi, tol, g);
        } else {
          throw std::invalid_argument("method must be ql, bisection or multisection");
        }
        return out;
      },
      py::arg("diag"), py::arg("off"), py::arg("method"),
      "Testing aid: eigenvalues (descending) of a symmetric tridiagonal by one of the core's solvers.");

  m.def(
      "_tridiagonal_eigenvalues_lanes",
      [](Arr diag, Arr off) {
        constexpr int K = 8;  // the double lane count of the scorer
        if (diag.ndim() != 2 || diag.shape(0) != K || off.ndim() != 2 || off.shape(0) != K ||
            off.shape(1) != diag.shape(1) || diag.shape(1) < 1)
          throw std::invalid_argument("need (8, d) diag and off arrays, d >= 1");
        const int d = int(diag.shape(1));
        std::vector<double> dl(size_t(d) * K), el(size_t(d) * K);
        for (int k = 0; k < K; ++k)
          for (int r = 0; r < d; ++r) {
            dl[size_t(r) * K + k] = diag.at(k, r);
            el[size_t(r) * K + k] = off.at(k, r);
          }
        bool ok[K];
        ocnna::cpu::tridiagonal_eigenvalues_lanes<double, K>(dl.data(), el.data(), d, ok);
        Arr out({K, d});
        for (int k = 0; k < K; ++k) {
          if (!ok[k]) throw std::runtime_error("no convergence");
          std::vector<double> ev(static_cast<size_t>(d), 0.0);
          for (int r = 0; r < d; ++r) ev[size_t(r)] = dl[size_t(r) * K + k];
          ocnna::sort_descending(ev.data(), d);
          std::copy(ev.begin(), ev.end(), out.mutable_data(k, 0));
        }
        return out;
      },
      py::arg("diag"), py::arg("off"),
      "Testing aid: eigenvalues (descending, per row) of 8 symmetric tridiagonals solved together "
      "in SIMD lanes, as the scorer does.");

  m.def("num_threads", &ocnna::cpu::num_threads, "Worker threads of the CPU core.");
  m.def("set_num_threads", &ocnna::cpu::set_num_threads, py::arg("n"),
        "Set the CPU core's thread count (0: default).");
}
