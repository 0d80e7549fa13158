"""The CPU core built for several instruction sets: every module this CPU
runs agrees with the oracle, the best one is chosen (or the one asked for),
the portable modules hold no instruction beyond their level, and the type
stubs declare exactly what the compiled modules define."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ocnna_fast
from ocnna_fast import _native
from ocnna_fast.scoring import reference

MODULES = _native.cpu_modules()
PACKAGE = Path(ocnna_fast.__file__).resolve().parent
STUBS = Path(__file__).resolve().parents[2] / "ocnna_fast"


@pytest.mark.parametrize("isa", list(MODULES))
@pytest.mark.parametrize("n_components", [None, 3, 0.9])
def test_every_instruction_set_agrees_with_the_oracle(isa, n_components, monkeypatch):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 7, 6, generator=gen).relu_()
    x[0, 1] = 0.0  # a dead map
    monkeypatch.setattr(_native, "_C", MODULES[isa])
    got = _native.map_energies(x, n_components).reshape(3, 5)
    want = np.array(
        [[reference.map_energy(x[i, c].double().numpy(), n_components) for c in range(5)] for i in range(3)]
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_the_best_instruction_set_this_cpu_runs_is_chosen():
    best = next(iter(MODULES))
    if not os.environ.get("OCNNA_CPU_ISA"):
        assert _native._C.ISA == best
    assert ocnna_fast.build_info()["cpu_isa"] == _native._C.ISA
    if (
        sys.platform.startswith("linux")
        and "avx512f" in Path("/proc/cpuinfo").read_text()
        and "avx512" in [m.ISA for m in MODULES.values()]
    ):
        assert best == "avx512"


def _isa_in_a_fresh_process(value: str) -> subprocess.CompletedProcess:
    code = "from ocnna_fast import _native; print(_native._C.ISA)"
    env = dict(os.environ, OCNNA_CPU_ISA=value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd="/")


@pytest.mark.parametrize("isa", list(MODULES))
def test_an_instruction_set_can_be_asked_for(isa):
    run = _isa_in_a_fresh_process(isa)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == isa


def test_an_instruction_set_this_cpu_or_build_lacks_is_refused_by_name():
    run = _isa_in_a_fresh_process("sse9")
    assert run.returncode != 0 and "OCNNA_CPU_ISA='sse9'" in run.stderr and _native._C.ISA in run.stderr


# registers each portable module may not touch: wider ones than its level has
FORBIDDEN = {"x86-64": r"%[yz]mm\d", "avx2": r"%zmm\d"}


@pytest.mark.parametrize("isa", [i for i in FORBIDDEN if i in MODULES])
def test_a_portable_module_holds_no_instruction_beyond_its_level(isa):
    """A wheel built on an AVX-512 machine must run on an older CPU: the
    baseline module uses no AVX register, the AVX2 one no AVX-512 register."""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump is not installed")
    path = MODULES[isa].__file__
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", path], capture_output=True, text=True).stdout
    assert text, f"objdump read nothing from {path}"
    found = re.findall(rf"^\s*[0-9a-f]+:\s+(\S+)\s+.*{FORBIDDEN[isa]}", text, flags=re.M)
    assert not found, f"{path}: {len(found)} instructions beyond {isa}, e.g. {sorted(set(found))[:5]}"


def _declared(stub: Path) -> set:
    names = set()
    for node in ast.parse(stub.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _defined(module) -> set:
    return {n for n in dir(module) if not n.startswith("__")}


@pytest.mark.parametrize("isa", list(MODULES))
def test_the_stubs_declare_what_each_cpu_module_defines(isa):
    assert _defined(MODULES[isa]) == _declared(STUBS / "_C.pyi")


def test_the_stubs_declare_what_the_cuda_module_defines():
    if _native._C_cuda is None:
        pytest.skip(f"the CUDA core is not built here ({_native._CUDA_IMPORT_ERROR})")
    assert _defined(_native._C_cuda) == _declared(STUBS / "_C_cuda.pyi")
