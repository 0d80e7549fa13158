"""The CUDA kernels (csrc/cuda/kernels.cuh) compiled for the CPU under a small
emulation of CUDA's built-ins (tests/native/cuda_emulation.h) and checked
against plain loops: index arithmetic, block and warp reductions, grid-stride
loops and the merge's accept/reject logic; a second run under ThreadSanitizer
checks that barriers order every shared-memory access.  Runs on every machine with a
C++20 compiler, so CI checks the kernels' logic without a GPU; speed and
inter-block races still need a GPU (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from conftest import REPO


def _compiler():
    for cxx in (os.environ.get("CXX"), "g++", "clang++"):
        if cxx and shutil.which(cxx):
            return cxx
    return None


def _build(cxx, flags, src, exe):
    return subprocess.run(
        [cxx, "-std=c++20", "-pthread", *flags, str(src), "-o", str(exe)], capture_output=True, text=True
    )


# ThreadSanitizer sees the emulated __syncthreads as what they are (barriers
# between OS threads), so it reports a shared-memory access that no barrier
# orders: a missing or misplaced __syncthreads in a kernel.  A race that
# happens not to change a number passes the plain run but not this one.
SANITIZERS = {
    "plain": ["-O1"],
    "tsan": ["-O1", "-g", "-fsanitize=thread", "-Wno-tsan"],
}


@pytest.mark.parametrize("sanitizer", list(SANITIZERS))
def test_cuda_kernels_under_cpu_emulation(tmp_path, sanitizer):
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (g++ or clang++) on PATH")
    flags = SANITIZERS[sanitizer]
    probe = tmp_path / "probe.cpp"
    probe.write_text(
        "#include <atomic>\n#include <barrier>\n#include <thread>\n"
        "int main() { std::barrier<> b(2); std::thread t([&] { b.arrive_and_wait(); });"
        " b.arrive_and_wait(); t.join(); return 0; }\n"
    )
    if _build(cxx, flags, probe, tmp_path / "probe").returncode != 0:
        pytest.skip(
            f"{cxx} cannot build C++20 <barrier> with {' '.join(flags)}"
            " (GCC >= 11 or a recent clang has it; ThreadSanitizer needs its runtime)"
        )
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    if sanitizer == "tsan" and subprocess.run([str(tmp_path / "probe")], env=env).returncode != 0:
        pytest.skip("ThreadSanitizer does not run on this machine (address-space layout)")
    exe = tmp_path / "emulated_kernels"
    build = _build(
        cxx,
        [*flags, "-Wno-unknown-pragmas", f"-I{REPO / 'csrc'}"],
        REPO / "tests" / "native" / "emulated_kernels.cpp",
        exe,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "all emulated kernel checks passed" in run.stdout
