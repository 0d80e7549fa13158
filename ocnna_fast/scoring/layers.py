"""Which layers OCNNA scores (docs/scoring.md §1)."""

from __future__ import annotations

from typing import Dict, Iterable, Optional

from torch import nn

__all__ = ["prunable_convs"]


def prunable_convs(model: nn.Module, layers: Optional[Iterable[str]] = None) -> Dict[str, nn.Conv2d]:
    """The prunable 2-D convolutions of ``model`` by qualified name, in module order.

    A conv is prunable when ``groups == 1`` (depthwise and grouped convs are
    decided by the conv that feeds them).  ``layers`` restricts the set; an
    unknown or non-prunable name is a ``ValueError``.
    """
    found = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1}
    if layers is None:
        return found
    if isinstance(layers, str):
        layers = [layers]
    wanted = list(dict.fromkeys(layers))
    modules = dict(model.named_modules())
    chosen: Dict[str, nn.Conv2d] = {}
    for name in wanted:
        if name not in modules:
            raise ValueError(f"model has no module named {name!r}")
        if name not in found:
            m = modules[name]
            why = f"a grouped conv (groups={m.groups})" if isinstance(m, nn.Conv2d) else f"a {type(m).__name__}"
            raise ValueError(f"layer {name!r} is not a prunable conv: it is {why}")
        chosen[name] = found[name]
    return chosen
