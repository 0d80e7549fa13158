"""Type stubs of the optional CUDA core (csrc/bindings_cuda.cpp).  Pointers and
the cudaStream_t are passed as integers."""

from typing import Sequence

def energies(
    ptr: int,
    dtype: int,
    shape: Sequence[int],
    strides: Sequence[int],
    mode: int,
    q: int,
    tau: float,
    out: int,
    stream: int,
    device: int = -1,
) -> None: ...
def accumulate(
    ptr: int,
    dtype: int,
    shape: Sequence[int],
    strides: Sequence[int],
    mode: int,
    q: int,
    tau: float,
    count: int,
    mean: int,
    m2: int,
    status: int,
    stream: int,
    device: int = -1,
) -> None: ...
def device_count() -> int: ...
def runtime_version() -> int: ...
