"""Loading of the native cores and the one place where tensors become raw buffers.

The compiled modules never see a torch type: this file turns a tensor into
``(address, dtype code, shape, element strides)`` and, for CUDA, the current
stream handle.  ``_C`` (CPU, baseline instruction set) is always built, with
``_C_avx2`` and ``_C_avx512`` beside it on x86-64 (the best this CPU runs is
used); ``_C_cuda`` is optional at build time and at import time.
"""

from __future__ import annotations

import numbers
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch

try:
    from . import _C as _baseline  # the CPU core must always be there
except ImportError as exc:  # pragma: no cover - depends on how Python was started
    import os as _os

    _here = _os.path.dirname(_os.path.abspath(__file__))
    raise ImportError(
        f"ocnna_fast was imported from {_here}, which holds no compiled core (_C). "
        "If that is the source checkout, import it from another folder so the installed "
        "package is used, or install in place with `pip install -e .`."
    ) from exc

# The CPU core is built for several instruction sets (CMakeLists.txt): the
# best one this CPU runs is used, or the one OCNNA_CPU_ISA names.  What each
# needs: GCC's names of the x86-64-v3 and x86-64-v4 extensions the compiler
# may use at those levels.
ISA_FEATURES = {
    "avx512": ("avx2", "fma", "bmi", "bmi2", "f16c", "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"),
    "avx2": ("avx2", "fma", "bmi", "bmi2", "f16c"),
}


def cpu_modules() -> Dict[str, Any]:
    """The CPU core modules this build has that this CPU runs, by instruction set, best first."""
    import importlib

    found: Dict[str, Any] = {}
    for isa, features in ISA_FEATURES.items():
        try:
            module = importlib.import_module(f"{__package__}._C_{isa}")
        except ImportError:
            continue
        if all(_baseline.cpu_supports(f) for f in features):
            found[isa] = module
    found[_baseline.ISA] = _baseline
    return found


def _choose_cpu_core() -> Any:
    import os

    modules = cpu_modules()
    asked = os.environ.get("OCNNA_CPU_ISA", "").strip()
    if not asked:
        return next(iter(modules.values()))
    if asked not in modules:
        raise ImportError(
            f"OCNNA_CPU_ISA={asked!r}: this build and CPU run {', '.join(modules)}; unset it to take the best"
        )
    return modules[asked]


_C = _choose_cpu_core()

try:  # the CUDA core is optional: absent build, or no usable runtime here
    from . import _C_cuda  # type: ignore[attr-defined]

    _CUDA_IMPORT_ERROR: Optional[str] = None
except ImportError as exc:  # pragma: no cover - depends on the build
    _C_cuda = None
    _CUDA_IMPORT_ERROR = str(exc)

__all__ = [
    "build_info",
    "parse_n_components",
    "batch_args",
    "cuda_core",
    "concrete_device",
    "current_stream",
    "map_energies",
]

# Element type and mode codes of csrc/common/ocnna_math.h (enum DType, enum
# Mode), as the compiled core exports them.
DTYPE_CODES: Dict[torch.dtype, int] = {
    torch.float32: _C.DTYPE_FLOAT32,
    torch.float64: _C.DTYPE_FLOAT64,
    torch.float16: _C.DTYPE_FLOAT16,
    torch.bfloat16: _C.DTYPE_BFLOAT16,
}
MODE_ALL, MODE_COUNT, MODE_RATIO, MODE_RANK = _C.MODE_ALL, _C.MODE_COUNT, _C.MODE_RATIO, _C.MODE_RANK

# Per-map statistics the accumulators can stream: the PCA energy (docs/scoring.md §2) or
# HRank's numerical rank of the map (ocnna_math.h, map_rank).
STATISTICS = ("energy", "rank")

NComponents = Optional[float]  # None, an int >= 1, or a float in (0, 1)


def parse_n_components(n_components: Any) -> Tuple[int, int, float]:
    """Validates ``n_components`` (docs/scoring.md §2, step 3) and returns ``(mode, q, tau)``."""
    if n_components is None:
        return MODE_ALL, 0, 0.0
    if isinstance(n_components, bool):
        raise ValueError("n_components must be None, an int >= 1 or a float in (0, 1); got a bool")
    if isinstance(n_components, numbers.Integral):
        if int(n_components) < 1:
            raise ValueError(f"n_components as an int must be >= 1, got {n_components}")
        if int(n_components) > 2**31 - 1:
            raise ValueError(f"n_components {n_components} is too large")
        return MODE_COUNT, int(n_components), 0.0
    if isinstance(n_components, numbers.Real):
        tau = float(n_components)
        if not 0.0 < tau < 1.0:
            raise ValueError(f"n_components as a float is an explained-variance ratio and must be in (0, 1), got {tau}")
        return MODE_RATIO, 0, tau
    raise ValueError(f"n_components must be None, an int >= 1 or a float in (0, 1); got {type(n_components).__name__}")


def canonical_n_components(n_components: Any) -> NComponents:
    """The validated value in a canonical Python type (int, float or None)."""
    mode, q, tau = parse_n_components(n_components)
    return None if mode == MODE_ALL else (q if mode == MODE_COUNT else tau)


def batch_args(x: torch.Tensor) -> Tuple[int, int, Tuple[int, ...], Tuple[int, ...]]:
    """``(address, dtype code, shape, element strides)`` of a 4-D tensor, no copy."""
    try:
        code = DTYPE_CODES[x.dtype]
    except KeyError:
        raise ValueError(f"activations must be float32, float64, float16 or bfloat16, got {x.dtype}") from None
    return x.data_ptr(), code, tuple(x.shape), tuple(x.stride())


def concrete_device(device: Union[str, torch.device]) -> torch.device:
    """``device`` as a ``torch.device``, a bare ``"cuda"`` naming the current GPU
    (so that accumulators and the tensors checked against them compare equal)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def current_stream(device: torch.device) -> int:
    """The raw ``cudaStream_t`` of ``device``'s current stream (called per hook,
    so it skips building a ``torch.cuda.Stream`` object where torch allows)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if _raw_stream is not None:
        return _raw_stream(index)
    return torch.cuda.current_stream(index).cuda_stream


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def cuda_core():
    """The CUDA module, or a clear error saying why it is not usable."""
    if _C_cuda is None:
        raise RuntimeError(
            "this build of ocnna-fast has no CUDA core "
            f"({_CUDA_IMPORT_ERROR or 'built without a CUDA compiler'}); "
            "rebuild with nvcc on PATH, or score on the CPU"
        )
    return _C_cuda


def build_info() -> Dict[str, Any]:
    """What was compiled and what can run here.

    Keys: ``version``, ``cuda_compiled`` (the CUDA core was built and imports),
    ``cuda_available`` (it sees a usable GPU now), ``cpu_threads``,
    ``cpu_isa`` (the instruction set of the CPU core in use; ``OCNNA_CPU_ISA``
    picks another), ``cpu_isas`` (those built that this CPU runs), and
    ``cuda_import_error`` when the CUDA module is missing.
    """
    from ._version import __version__

    info: Dict[str, Any] = {
        "version": __version__,
        "cuda_compiled": _C_cuda is not None,
        "cuda_available": False,
        "cpu_threads": _C.num_threads(),
        "cpu_isa": _C.ISA,
        "cpu_isas": list(cpu_modules()),
    }
    if _C_cuda is not None:
        info["cuda_available"] = _C_cuda.device_count() > 0
        info["cuda_runtime_version"] = _C_cuda.runtime_version()
    else:
        info["cuda_import_error"] = _CUDA_IMPORT_ERROR
    return info


def map_energies(x: torch.Tensor, n_components: Any = None) -> np.ndarray:
    """The per-map energies ``F[n, c]`` of a batch ``(N, C, H, W)``, from the
    core of the tensor's device (no accumulation): what the tests and the
    precision benchmark compare with the oracle."""
    mode, q, tau = parse_n_components(n_components)
    ptr, code, shape, strides = batch_args(x)
    if x.is_cuda:
        out = torch.empty(shape[0] * shape[1], dtype=torch.float64, device=x.device)
        cuda_core().energies(
            ptr, code, shape, strides, mode, q, tau, out.data_ptr(), current_stream(x.device), x.device.index
        )
        return out.cpu().numpy().reshape(shape[:2])
    out = np.empty(shape[0] * shape[1])
    _C.energies(ptr, code, shape, strides, mode, q, tau, out)
    return out.reshape(shape[:2])
