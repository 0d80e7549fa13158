"""Saving and restoring the train/eval flag of every submodule.

``model.train(was)`` sets one flag on the whole tree, so a submodule the user
had put in its own mode (a frozen BatchNorm in eval inside a training model)
would come back changed.  These record and restore each module's own flag.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Sequence

import torch
from torch import nn

from .placement import input_of

__all__ = ["training_flags", "restore_training_flags"]


def training_flags(model: nn.Module) -> Dict[nn.Module, bool]:
    """Each module of ``model`` (itself included) with its ``training`` flag."""
    return {m: m.training for m in model.modules()}


def restore_training_flags(flags: Dict[nn.Module, bool]) -> None:
    """Puts back the flags ``training_flags`` recorded, module by module."""
    for m, was in flags.items():
        m.training = was


def hooked_eval_pass(
    model: nn.Module, batches: Iterable[Any], hooks: Sequence[Any], layers: Sequence[str], seen: Callable
) -> None:
    """One forward pass over ``batches`` (each an input tensor or a tuple whose
    first item is) in eval mode without autograd, with ``hooks`` (``(module,
    hook, pre)``) registered only meanwhile; training flags restored.  Raises
    when a named layer of ``layers`` never ran (``seen(name)`` false)."""
    handles = [m.register_forward_pre_hook(h) if pre else m.register_forward_hook(h) for m, h, pre in hooks]
    flags = training_flags(model)
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(input_of(batch))
    finally:
        for h in handles:
            h.remove()
        restore_training_flags(flags)
    missing = [n for n in layers if not seen(n)]
    if missing:
        raise ValueError(f"layers {missing[:3]} never ran on the calibration batches")
