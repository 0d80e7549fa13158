"""Saving and restoring the train/eval flag of every submodule.

``model.train(was)`` sets one flag on the whole tree, so a submodule the user
had put in its own mode (a frozen BatchNorm in eval inside a training model)
would come back changed.  These record and restore each module's own flag.
"""

from __future__ import annotations

from typing import Dict

from torch import nn

__all__ = ["training_flags", "restore_training_flags"]


def training_flags(model: nn.Module) -> Dict[nn.Module, bool]:
    """Each module of ``model`` (itself included) with its ``training`` flag."""
    return {m: m.training for m in model.modules()}


def restore_training_flags(flags: Dict[nn.Module, bool]) -> None:
    """Puts back the flags ``training_flags`` recorded, module by module."""
    for m, was in flags.items():
        m.training = was
