"""Models users bring: ``package.module:factory``, a callable that takes no
arguments and returns an ``nn.Module`` (``torchvision.models:resnet18``,
``mypkg.nets:build_net``).  The current folder is importable, as under
``python -m``, so a factory in a file next to the user's data works."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Callable

from torch import nn

__all__ = ["is_factory", "load_factory", "build_user_model"]


def is_factory(spec: str) -> bool:
    """Whether a model name is a ``module:callable`` spec rather than a zoo name."""
    return ":" in spec


def load_factory(spec: str) -> Callable[[], nn.Module]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--model must be 'package.module:factory', got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--model {spec}: cannot import {module_name!r} ({exc})") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--model {spec}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"--model {spec}: {attr} is not callable")
    return obj


def build_user_model(spec: str) -> nn.Module:
    """Calls the factory; anything but an ``nn.Module`` back is an error."""
    factory = load_factory(spec)
    try:
        inspect.signature(factory).bind()
    except TypeError as exc:
        raise ValueError(
            f"--model {spec}: the factory must be callable without arguments ({exc}); wrap it, e.g. "
            "def build(): return MyNet(num_classes=10)"
        ) from None
    except ValueError:
        pass  # no signature to inspect (a builtin): call it and see
    model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model
