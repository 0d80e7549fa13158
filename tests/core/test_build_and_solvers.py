"""Build facts, and the tridiagonal eigen-solvers of the shared header.

The CUDA core finds eigenvalues by Sturm multisection (a few points per step,
one per lane); CI has no GPU, so that solver is also exposed through the CPU
module, with its points counted one after another, and checked here against
QL and NumPy, with one point per step (bisection) and two."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import ocnna_fast
from ocnna_fast import _native


def test_build_info_keys():
    info = ocnna_fast.build_info()
    assert info["version"] == ocnna_fast.__version__
    assert isinstance(info["cuda_compiled"], bool) and isinstance(info["cuda_available"], bool)
    assert info["cpu_threads"] >= 1
    if not info["cuda_compiled"]:
        assert info["cuda_available"] is False


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_cuda_core_is_compiled_when_nvcc_is_present():
    info = ocnna_fast.build_info()
    assert info["cuda_compiled"], info.get("cuda_import_error")


def test_cuda_core_imports_without_a_gpu():
    if not ocnna_fast.build_info()["cuda_compiled"]:
        pytest.skip("CUDA core not built")
    assert _native._C_cuda.device_count() >= 0  # no exception without a driver


@pytest.mark.parametrize("method", ["ql", "bisection", "multisection"])
@pytest.mark.parametrize("d", [1, 2, 3, 7, 30, 112])
def test_tridiagonal_solvers_agree_with_numpy(method, d):
    rng = np.random.default_rng(d)
    off = np.zeros(d)
    diag = rng.random(d)
    off[: d - 1] = rng.standard_normal(d - 1) * 0.3
    t = np.diag(diag) + np.diag(off[: d - 1], 1) + np.diag(off[: d - 1], -1)
    want = np.sort(np.linalg.eigvalsh(t))[::-1]
    got = _native._C._tridiagonal_eigenvalues(diag, off, method)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13 * max(1.0, np.abs(want).max()))


def test_tridiagonal_solvers_on_hard_spectra():
    """Clustered, repeated and zero eigenvalues: deflation and bisection ties."""
    cases = [
        (np.zeros(5), np.zeros(5)),
        (np.ones(6), np.zeros(6)),
        (np.array([1.0, 1.0, 1.0, 1e-20]), np.array([1e-30, 0.0, 1e-30, 0.0])),
        (np.linspace(0, 1, 40), np.full(40, 1e-9)),
    ]
    for diag, off in cases:
        t = np.diag(diag) + np.diag(off[:-1], 1) + np.diag(off[:-1], -1)
        want = np.sort(np.linalg.eigvalsh(t))[::-1]
        for method in ("ql", "bisection", "multisection"):
            got = _native._C._tridiagonal_eigenvalues(diag.copy(), off.copy(), method)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-14, err_msg=method)


def _tridiagonal(diag, off):
    return np.diag(diag) + np.diag(off[:-1], 1) + np.diag(off[:-1], -1)


@pytest.mark.parametrize("d", [1, 2, 3, 7, 14, 56])
def test_lane_solver_matches_the_scalar_ql_in_every_lane(d):
    """Eight different matrices in the eight lanes converge at different
    rates (one is already diagonal, one has repeated and tiny entries), so the
    per-lane masks are exercised; every lane must give the scalar QL's
    eigenvalues bit for bit, and numpy's to rounding."""
    rng = np.random.default_rng(100 + d)
    diag = rng.random((8, d))
    off = rng.standard_normal((8, d)) * 0.3
    off[1] = 0.0  # already diagonal: converged from the start
    diag[2], off[2] = 1.0, 1e-30  # repeated eigenvalue, negligible coupling
    off[3, : d // 2] = 0.0  # splits into blocks
    diag[4] *= 1e-6  # tiny spectrum next to O(1) ones
    off[4] *= 1e-6
    off[5] = np.linspace(0.0, 1.0, d)  # strong coupling at the bottom
    off[:, -1] = 0.0
    got = _native._C._tridiagonal_eigenvalues_lanes(diag.copy(), off.copy())
    for k in range(8):
        scalar = _native._C._tridiagonal_eigenvalues(diag[k].copy(), off[k].copy(), "ql")
        np.testing.assert_array_equal(got[k], scalar, err_msg=f"lane {k}")
        want = np.sort(np.linalg.eigvalsh(_tridiagonal(diag[k], off[k])))[::-1]
        np.testing.assert_allclose(got[k], want, rtol=0, atol=1e-13 * max(1.0, np.abs(want).max()), err_msg=f"lane {k}")
