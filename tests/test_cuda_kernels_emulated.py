"""The CUDA kernels (csrc/cuda/kernels.cuh) compiled for the CPU under a small
emulation of CUDA's built-ins (tests/native/cuda_emulation.h) and checked
against plain loops: index arithmetic, block and warp reductions, grid-stride
loops and the merge's accept/reject logic.  Runs on every machine with a
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


def test_cuda_kernels_under_cpu_emulation(tmp_path):
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (g++ or clang++) on PATH")
    probe = tmp_path / "probe.cpp"
    probe.write_text("#include <atomic>\n#include <barrier>\nint main() { std::barrier<> b(1); return 0; }\n")
    if subprocess.run([cxx, "-std=c++20", "-pthread", str(probe), "-o", str(tmp_path / "probe")],
                      capture_output=True).returncode != 0:
        pytest.skip(f"{cxx} lacks C++20 <barrier> (GCC >= 11 or a recent clang has it)")
    exe = tmp_path / "emulated_kernels"
    build = subprocess.run(
        [cxx, "-std=c++20", "-O1", "-pthread", "-Wno-unknown-pragmas", f"-I{REPO / 'csrc'}",
         str(REPO / "tests" / "native" / "emulated_kernels.cpp"), "-o", str(exe)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-1000:]
    assert "all emulated kernel checks passed" in run.stdout
