"""Build facts, and the three tridiagonal eigen-solvers of the shared header.

The CUDA core finds eigenvalues by Sturm bisection; CI has no GPU, so that
solver is also exposed through the CPU module and checked here against QL and
NumPy."""
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


@pytest.mark.parametrize("method", ["ql", "lockstep", "bisection"])
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
        for method in ("ql", "lockstep", "bisection"):
            got = _native._C._tridiagonal_eigenvalues(diag.copy(), off.copy(), method)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-14, err_msg=method)
