"""Checks of everything read back from outside: state dicts, checkpoints and
scores files.  Each check raises a ``ValueError`` that says what is wrong and
returns clean float64 tensors, so a loader can validate every part before it
changes any state (nothing is ever half loaded)."""

from __future__ import annotations

import hashlib
import math
import numbers
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "as_count",
    "float_vector",
    "accumulators",
    "layer_scores",
    "tensors_sha256",
    "check_digest",
    "exact_keys",
    "finite_number",
    "positive_int",
    "input_batches_of",
]


def as_count(value: Any, what: str, minimum: int = 0) -> int:
    """An int >= ``minimum`` (Python or NumPy ints; bools, floats and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def float_vector(t: Any, n: int, what: str, *, nonnegative: bool = True) -> torch.Tensor:
    """A 1-D floating tensor of ``n`` finite (and by default non-negative)
    values, as a float64 CPU copy."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{what} must be a tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise ValueError(f"{what} must be a floating-point tensor, got {t.dtype}")
    if tuple(t.shape) != (n,):
        raise ValueError(f"{what} must have shape ({n},), got {tuple(t.shape)}")
    out = t.detach().to("cpu", torch.float64).clone()
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{what} holds non-finite values")
    if nonnegative and bool((out < 0).any()):
        raise ValueError(f"{what} holds negative values")
    return out


def accumulators(
    count: Any, mean: Any, m2: Any, images: Any, n: int, where: str
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The (count, mean, M2) state of one layer: finite, non-negative (energies
    are norms, so their mean is too), and every channel counted once per
    image (every batch covers every channel)."""
    images = as_count(images, f"{where}: images")
    count = float_vector(count, n, f"{where}: count")
    mean = float_vector(mean, n, f"{where}: mean")
    m2 = float_vector(m2, n, f"{where}: m2")
    if bool((count != float(images)).any()):
        raise ValueError(f"{where}: per-channel counts disagree with the {images} images recorded")
    if images == 0 and bool((mean != 0).any() or (m2 != 0).any()):
        raise ValueError(f"{where}: no images recorded but non-zero statistics")
    return count, mean, m2, images


def layer_scores(
    score: Any, mean: Any, std: Any, dead: Any, count: Any, where: str
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The fields of a LayerScores: same-length finite non-negative vectors,
    a 0/1 dead mask that agrees with ``mean == 0`` and ``score == 0``, and
    at least one image."""
    count = as_count(count, f"{where}: count", minimum=1)
    if not isinstance(score, torch.Tensor) or score.dim() != 1:
        raise ValueError(f"{where}: score must be a 1-D tensor")
    n = int(score.shape[0])
    if n < 1:
        raise ValueError(f"{where}: no channels")
    score = float_vector(score, n, f"{where}: score")
    mean = float_vector(mean, n, f"{where}: mean")
    std = float_vector(std, n, f"{where}: std")
    if not isinstance(dead, torch.Tensor) or tuple(dead.shape) != (n,):
        raise ValueError(f"{where}: dead must be a tensor of shape ({n},)")
    if dead.dtype != torch.bool:
        if dead.dtype.is_floating_point or dead.dtype.is_complex or bool(((dead != 0) & (dead != 1)).any()):
            raise ValueError(f"{where}: dead must hold only 0 and 1")
        dead = dead != 0
    dead = dead.cpu().clone()
    if not torch.equal(dead, mean == 0):
        raise ValueError(f"{where}: dead mask disagrees with the zero means")
    if bool((score[dead] != 0).any()):
        raise ValueError(f"{where}: dead channels must score 0")
    return score, mean, std, dead, count


def exact_keys(have: Iterable[str], want: Iterable[str], where: str) -> None:
    """The stored names are exactly the expected ones."""
    have, want = set(have), set(want)
    if have != want:
        extra, missing = sorted(have - want)[:4], sorted(want - have)[:4]
        raise ValueError(f"{where}: malformed, unexpected entries {extra} / missing entries {missing}")


def tensors_sha256(tensors: Mapping[str, torch.Tensor], meta: Sequence[Tuple[str, str]] = ()) -> str:
    """sha256 over named tensors (in name order: dtype, shape, bytes) and
    metadata pairs: the integrity digest a file stores and its loader checks."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    for k, v in sorted(meta):
        h.update(f"{k}={v};".encode())
    return h.hexdigest()


def check_digest(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str], what: str) -> None:
    """The ``sha256`` entry of ``meta`` is the digest of the tensors and the
    other metadata, as written by ``tensors_sha256``; else ``what`` is damaged."""
    body = [(k, v) for k, v in meta.items() if k != "sha256"]
    if tensors_sha256(tensors, body) != meta.get("sha256"):
        raise ValueError(f"{what} is damaged: its contents do not match the digest it was saved with")


def input_batches_of(data: Any, what: str, limit: Optional[int] = None) -> List[torch.Tensor]:
    """The input batches of ``data``: a tensor (one batch), or an iterable of
    tensors or of ``(inputs, labels, ...)`` tuples, as a ``DataLoader`` gives;
    at most ``limit`` images (the iteration stops there: a large loader is
    not read to its end)."""
    if data is None:
        return None
    items = [data] if isinstance(data, torch.Tensor) else data
    try:
        iterator = iter(items)
    except TypeError:
        raise TypeError(f"{what} must be a tensor or an iterable of batches, got {type(data).__name__}") from None
    batches: List[torch.Tensor] = []
    n = 0
    for b in iterator:
        x = b[0] if isinstance(b, (tuple, list)) and b else b
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise TypeError(
                f"{what} must hold input batches (tensors, or (inputs, labels) pairs), got a {type(x).__name__}"
            )
        if limit is not None:
            x = x[: limit - n]
        batches.append(x)
        n += int(x.shape[0])
        if limit is not None and n >= limit:
            break
    return batches


def positive_int(value: Any, what: str) -> int:
    """``value`` as an int >= 1, or a ``ValueError`` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return int(value)


def finite_number(
    value: Any, what: str, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False
) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with
    ``low_open``); NaN, infinity, bools and strings are ``ValueError``s."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v > high or (v <= low if low_open else v < low):
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(f"{what} must be a finite number in {bounds}, got {value!r}")
    return v


def torch_load_safely(path: Any, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU.  A file holding
    anything but tensors and plain containers is a ``ValueError`` that says so;
    torch's own message is left out, since it suggests ``weights_only=False``,
    which would run code the file carries."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unpickl" in type(exc).__name__:
            first = "it holds objects other than tensors, numbers and plain containers, which are never unpickled"
        raise ValueError(f"cannot read {what} {path}: {first}") from None


def floating_like(state: Mapping[str, Any], reference: Mapping[str, torch.Tensor], where: str) -> None:
    """Each entry of ``state`` whose counterpart in ``reference`` (a model's
    state dict) is floating-point must be a floating-point tensor too:
    ``load_state_dict`` would otherwise copy integers into the weights
    silently (every filter of an int64 file truncates to 0 and scores dead)."""
    bad = [
        f"{k} ({v.dtype})"
        for k, v in state.items()
        if k in reference
        and reference[k].dtype.is_floating_point
        and not (isinstance(v, torch.Tensor) and v.dtype.is_floating_point)
    ]
    if bad:
        raise ValueError(
            f"{where}: {len(bad)} weights are not floating-point tensors, e.g. {', '.join(bad[:3])}; "
            "save the model's float weights"
        )


def percentile(value: Any, what: str = "k") -> float:
    """A percentile in [0, 100) as a float (NaN, bools and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= float(value) < 100:
        raise ValueError(f"{what} is a percentile in [0, 100), got {value!r}")
    return float(value)
