"""Type stubs of the CPU core (csrc/bindings_cpu.cpp): _C, and _C_avx2 and _C_avx512 where built."""

from typing import Sequence

import numpy as np
import numpy.typing as npt

ISA: str  # the instruction set this module was compiled for: x86-64, avx2, avx512 (or native, or the machine's)
INTERNAL_FLAG: int  # accumulate returns INTERNAL_FLAG + channel when an eigen-solve failed
# codes of ocnna_math.h's enum DType and enum Mode
DTYPE_FLOAT32: int
DTYPE_FLOAT64: int
DTYPE_FLOAT16: int
DTYPE_BFLOAT16: int
MODE_ALL: int
MODE_COUNT: int
MODE_RATIO: int
MODE_RANK: int

def cpu_supports(feature: str) -> bool:
    """Whether this CPU and OS run an instruction-set extension (GCC's name: avx2, fma, avx512f, ...)."""

def energies(
    ptr: int,
    dtype: int,
    shape: Sequence[int],
    strides: Sequence[int],
    mode: int,
    q: int,
    tau: float,
    out: npt.NDArray[np.float64],
) -> None:
    """Per-map energies F[n, c] into out (float64, N*C)."""

def accumulate(
    ptr: int,
    dtype: int,
    shape: Sequence[int],
    strides: Sequence[int],
    mode: int,
    q: int,
    tau: float,
    count: npt.NDArray[np.float64],
    mean: npt.NDArray[np.float64],
    m2: npt.NDArray[np.float64],
) -> int:
    """Fold a batch in; -1, or the first channel with a non-finite map (nothing changed)."""

def merge(
    count: npt.NDArray[np.float64],
    mean: npt.NDArray[np.float64],
    m2: npt.NDArray[np.float64],
    count_b: npt.NDArray[np.float64],
    mean_b: npt.NDArray[np.float64],
    m2_b: npt.NDArray[np.float64],
) -> None:
    """Chan merge of accumulators b into a, in place."""

def _tridiagonal_eigenvalues(
    diag: npt.NDArray[np.float64], off: npt.NDArray[np.float64], method: str
) -> npt.NDArray[np.float64]:
    """Testing aid: eigenvalues (descending) by 'ql' or 'bisection'."""

def _tridiagonal_eigenvalues_lanes(
    diag: npt.NDArray[np.float64], off: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Testing aid: (8, d) tridiagonals solved together in SIMD lanes; rows sorted descending."""

def num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
