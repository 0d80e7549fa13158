"""Models users bring: ``package.module:factory``, a callable that returns
an ``nn.Module`` (``mypkg.nets:build_net``), called with no arguments or
with the literal ones the spec writes after it
(``torchvision.models:resnet18(num_classes=10)``: Python literals only,
nothing is evaluated).  The spec is the model's name in a pruned folder's
plan, so the same text rebuilds it.  The current folder is importable, as
under ``python -m``, so a factory in a file next to the user's data works."""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import os
import sys
from typing import Any, Callable, Dict, List, Tuple

from torch import nn

__all__ = ["is_factory", "factory_name", "load_factory", "build_user_model"]


def is_factory(spec: str) -> bool:
    """Whether a model name is a ``module:callable`` spec rather than a zoo name."""
    return ":" in spec


def _parts(spec: str) -> Tuple[str, str, str]:
    """``module``, ``factory`` and ``(arguments)`` (empty without them) of a spec."""
    module_name, _, attr = spec.partition(":")
    call = ""
    if "(" in attr:
        attr, call = attr[: attr.index("(")], attr[attr.index("(") :]
    return module_name, attr, call


def factory_name(spec: str) -> str:
    """The factory's own name (``resnet18`` for ``torchvision.models:resnet18(num_classes=10)``)."""
    return _parts(spec)[1].split(".")[-1]


def _arguments(spec: str, call: str) -> Tuple[List[Any], Dict[str, Any]]:
    """The literal arguments of ``factory(...)`` in a spec."""
    try:
        node = ast.parse(f"f{call}", mode="eval").body
        if not isinstance(node, ast.Call):
            raise ValueError
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
        if len(kwargs) != len(node.keywords):
            raise ValueError
    except (SyntaxError, ValueError):
        raise ValueError(
            f"--model {spec}: the factory's arguments must be Python literals, e.g. "
            "torchvision.models:resnet18(num_classes=10)"
        ) from None
    return args, kwargs


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """The spec's factory, with its arguments bound when the spec gives any."""
    module_name, attr, call = _parts(spec)
    if not module_name or not attr:
        raise ValueError(f"--model must be 'package.module:factory', got {spec!r}")
    if call:
        args, kwargs = _arguments(spec, call)
        return functools.partial(_load_callable(spec, module_name, attr), *args, **kwargs)
    return _load_callable(spec, module_name, attr)


def _load_callable(spec: str, module_name: str, attr: str) -> Callable[..., Any]:
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
            f"--model {spec}: the factory must be callable with the arguments the spec gives ({exc}); "
            "write them after it, e.g. torchvision.models:resnet18(num_classes=10)"
        ) from None
    except ValueError:
        pass  # no signature to inspect (a builtin): call it and see
    model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model
