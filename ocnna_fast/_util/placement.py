"""Where a model runs and what it is fed: the input tensor of one item of a
data iterable, and the (home, run) devices of a model.  Shared by scoring
and BatchNorm re-estimation."""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .. import _native

__all__ = [
    "input_of",
    "model_device",
    "placement",
    "usable_device",
    "resolve_device",
    "to_device",
    "describe_device",
    "DEVICE_CHOICES",
]

# what a device is asked for as: auto picks a usable GPU, else the CPU
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def input_of(batch: Any) -> torch.Tensor:
    """The model input of one item of ``data``: a tensor, or the first element of a tuple/list."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise TypeError("data yielded an empty tuple/list; expected (input, target, ...)")
        batch = batch[0]
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"data must yield input tensors or (input, target, ...) tuples, got {type(batch).__name__}")
    if batch.dim() == 0:
        raise ValueError("data yielded a 0-d tensor; expected a batch of inputs")
    return batch


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def usable_device(device: Union[str, torch.device]) -> torch.device:
    """``device`` as a concrete ``torch.device`` that can hold a model's
    weights here, checked before anything moves: an unknown name, ``meta``
    (tensors without data: a model moved there cannot come back) and a GPU
    that is absent are ``ValueError``s."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r} (use {DEVICE_CHOICES})") from exc
    if dev.type == "meta":
        raise ValueError("device 'meta' holds no data: a model moved there loses its weights; use cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but no CUDA GPU is usable here; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    return _native.concrete_device(dev)


def resolve_device(device: Union[None, str, torch.device]) -> Optional[torch.device]:
    """``device`` made concrete: ``"auto"`` is the current GPU when one is
    usable, else the CPU; under torchrun (``LOCAL_RANK`` set) ``"auto"`` and
    ``"cuda"`` are the process's own GPU; ``None`` stays ``None`` (the
    caller's default); anything else as ``usable_device`` checks it."""
    if device is None:
        return None
    text = device.strip().lower() if isinstance(device, str) else None
    if text == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    local = os.environ.get("LOCAL_RANK")
    if text in ("auto", "cuda") and local and torch.cuda.is_available():  # under torchrun: this process's own GPU
        return torch.device("cuda", int(local) % torch.cuda.device_count())
    return usable_device("cuda" if text == "auto" else device)


def describe_device(device: Union[str, torch.device]) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``: what a report says ran the job."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return str(dev)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; from pinned host memory the copy overlaps the GPU's work."""
    if x.device == device:
        return x
    return x.to(device, non_blocking=x.is_pinned() if device.type == "cuda" else False)


def placement(model: nn.Module, device: Union[None, str, torch.device]) -> Tuple[torch.device, torch.device]:
    """``(home, run)``: where the model's weights are, and where to run it
    (``device``, default home; a bare ``"cuda"`` means the current GPU)."""
    home = model_device(model)
    if home.type == "meta":
        raise ValueError("the model's weights are on device 'meta' (no data): load its weights first")
    return home, usable_device(device) if device is not None else _native.concrete_device(home)
