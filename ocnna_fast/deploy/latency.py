"""Latency of a callable: warm-up, then the median and spread of timed
repeats.  One function for every runtime (PyTorch eager, ONNX Runtime,
TorchScript), so their figures are measured the same way."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict

import torch
from torch import nn

__all__ = ["time_calls", "eager_call", "latency_ms", "eager_latency"]


def time_calls(call: Callable[[], object], repeats: int, warmup: int = 2) -> Dict[str, float]:
    """Milliseconds per ``call()``: median, quartiles, min and max of
    ``repeats`` timed calls after ``warmup`` untimed ones."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times = []
    for i in range(warmup + repeats):
        t = time.perf_counter()
        call()
        if i >= warmup:
            times.append(1000.0 * (time.perf_counter() - t))
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {
        "median": statistics.median(times),
        "q25": q[0],
        "q75": q[2],
        "min": min(times),
        "max": max(times),
        "repeats": repeats,
    }


def eager_call(model: nn.Module, batch: int, size: int) -> Callable[[], object]:
    """One eager forward pass of ``model`` (eval mode, no autograd) on a fixed
    random ``(batch, 3, size, size)`` input on the model's device, as a
    function of nothing; on a GPU it returns when the pass has finished."""
    model = model.eval()
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    x = torch.randn(batch, 3, size, size).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    def call() -> object:
        with torch.no_grad():
            out = model(x)
        if sync is not None:
            sync(device)
        return out

    return call


def latency_ms(model: nn.Module, batch: int, size: int, repeats: int, warmup: int = 2) -> Dict[str, float]:
    """:func:`time_calls` of :func:`eager_call`."""
    return time_calls(eager_call(model, batch, size), repeats, warmup)


def eager_latency(model: nn.Module, input_size: int, repeats: int) -> Dict[int, Dict[str, float]]:
    """PyTorch eager milliseconds at batch 1 (``repeats``) and 64 (a third of them, at least 3)."""
    return {b: latency_ms(model, b, input_size, repeats if b == 1 else max(3, repeats // 3)) for b in (1, 64)}
