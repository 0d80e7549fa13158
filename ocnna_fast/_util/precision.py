"""Mixed precision where it is safe: training (distillation) and evaluation
run their convolutions under ``torch.autocast``, in bfloat16 where the device
has it, else float16 with a gradient scaler (float16's range is too narrow
for unscaled gradients).  Weights, optimiser state and BatchNorm statistics
stay float32; the scorer keeps its own precision rules (docs/scoring.md)."""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Optional, Tuple, Union

import torch

__all__ = ["PRECISIONS", "resolve_precision", "autocast", "grad_scaler"]

# fp32: everything in float32; amp: autocast (bfloat16, or float16 with a
# gradient scaler); auto: amp on a GPU, fp32 on the CPU
PRECISIONS = ("auto", "fp32", "amp")


def resolve_precision(precision: Optional[str], device: Union[str, torch.device]) -> str:
    """``fp32`` or ``amp``: what ``precision`` (``None``/``auto``: amp on a GPU) means on ``device``."""
    if precision in (None, "auto"):
        return "amp" if torch.device(device).type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def amp_dtype(device: Union[str, torch.device]) -> torch.dtype:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(precision: str, device: Union[str, torch.device]) -> ContextManager[Any]:
    """The context a forward pass runs in: autocast for ``amp``, nothing for ``fp32``."""
    if precision != "amp":
        return contextlib.nullcontext()
    dev = torch.device(device)
    return torch.autocast(device_type=dev.type, dtype=amp_dtype(dev))


def grad_scaler(precision: str, device: Union[str, torch.device]) -> Tuple[Optional[Any], str]:
    """A gradient scaler where float16 needs one (``None`` otherwise), and the autocast dtype's name."""
    if precision != "amp":
        return None, "float32"
    dtype = amp_dtype(device)
    if dtype == torch.float16:
        return torch.amp.GradScaler(torch.device(device).type), "float16"
    return None, "bfloat16"
