"""Where a conv's maps are read: its own output (docs/scoring.md §1, the default) or the
activation after it (``tap="post_activation"``).

The post-activation map of a conv is ``act(bn(conv(x)))`` when the conv's
output goes only to an eval-mode BatchNorm (or straight) into a ReLU/ReLU6.
The paper worked in Keras, where a VGG conv layer holds its ReLU, so this is
the other defensible reading of "the filter's output".  The chain is found by
tracing the model with ``torch.fx``; the scorer then hooks the last module of
the chain before the activation and applies the activation itself, so no
model code changes and in-place activations are handled like any other
in-place edit.
"""

from __future__ import annotations

import operator  # noqa: F401  (fx graphs may name it)
import warnings
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TAPS", "post_activation_taps", "scored_maps"]

TAPS = ("conv_output", "post_activation")

Activation = Callable[[torch.Tensor], torch.Tensor]


def _relu6(t: torch.Tensor) -> torch.Tensor:
    return torch.clamp(t, 0.0, 6.0)


def _activation_of(node, modules: Mapping[str, nn.Module]) -> Optional[Activation]:
    """The activation a graph node applies, if it is a (functional or module) ReLU/ReLU6."""
    if node.op == "call_function":
        if node.target in (F.relu, torch.relu):
            return torch.relu
        if node.target is F.relu6:
            return _relu6
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return torch.relu
    if node.op == "call_module":
        m = modules.get(node.target)
        if isinstance(m, nn.ReLU6):
            return _relu6
        if isinstance(m, nn.ReLU):
            return torch.relu
    return None


def post_activation_taps(
    model: nn.Module, convs: Mapping[str, nn.Module]
) -> Dict[str, Tuple[str, Optional[Activation]]]:
    """For each conv name: ``(module to hook, activation to apply)``.  A conv
    followed (through at most one BatchNorm, and nothing else reading the
    intermediate) by a ReLU/ReLU6 maps to that BatchNorm (or itself) and the
    activation; any other conv maps to itself and ``None`` (its own output).
    A model ``torch.fx`` cannot trace is a ``ValueError``."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types on dynamic control flow
        raise ValueError(
            f"tap='post_activation' needs a model torch.fx can trace ({type(exc).__name__}: {exc}); "
            "use tap='conv_output'"
        ) from exc
    modules = dict(gm.named_modules())
    taps: Dict[str, Tuple[str, Optional[Activation]]] = {name: (name, None) for name in convs}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in convs:
            continue
        cur, hook = node, node.target
        users = list(cur.users)
        if (
            len(users) == 1
            and users[0].op == "call_module"
            and isinstance(modules.get(users[0].target), nn.modules.batchnorm._BatchNorm)
        ):
            cur, hook = users[0], users[0].target
            users = list(cur.users)
        if len(users) == 1:
            act = _activation_of(users[0], modules)
            if act is not None:
                taps[node.target] = (hook, act)
    return taps


def scored_maps(model: nn.Module, convs: Dict[str, nn.Module], tap: str) -> Dict[str, Any]:
    """conv name -> (module whose output is scored, activation applied to it or None)."""
    if tap not in TAPS:
        raise ValueError(f"tap must be one of {TAPS}, got {tap!r}")
    if tap == "conv_output":
        return {n: (n, None) for n in convs}
    taps = post_activation_taps(model, convs)
    plain = [n for n, (_, act) in taps.items() if act is None]
    if plain:
        warnings.warn(
            f"tap='post_activation': {len(plain)} conv(s) are not followed by their own activation "
            f"and are scored on their output, e.g. {plain[:3]}"
        )
    return taps
