"""What structure a prune reaches and how: the paper's percentile rule
(``k``) or a budget (``target``) with the settings of its allocation, the
criterion that ranks the channels, and the recovery of the cut model.

One frozen object, its defaults defined here once and validated once, built
the same way from Python keywords (``PruneSpec(...)``), from command-line
flags (``from_flags``) and from a bench method string (``from_method``): the
same words give the same specification wherever they are written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from .._util.validate import as_count, percentile, positive_int
from ..recovery.recover import check_folded
from ..selection.criteria import CRITERIA
from ..selection.rules import DEFAULT_CRITERION
from .allocation import parse_target
from .latency import check_settings as check_latency_settings

__all__ = [
    "PruneSpec",
    "parse_method",
    "ALLOCATIONS",
    "SEARCHES",
    "REFINE_STEPS",
    "CURVE_SHARE",
    "CURVES",
    "DEFAULT_K",
    "METHOD_KINDS",
    "LEGACY_METHODS",
    "BUDGET_FIELDS",
    "SENSITIVITY_FIELDS",
]

ALLOCATIONS = ("sensitivity", "global")
# how the sensitivity allocation measures its candidates (docs/budget.md,
# "What the search costs"): ``one-pass`` normalises each candidate by the
# statistics of its own evaluation images (one pass where the others
# re-estimate on calibration images first) and runs the local search's moves
# from the first layer where they differ from the current allocation: 3.1x
# fewer image-forwards than ``full`` on ResNet-56 and 2.7x on ResNet-20 at
# MACs 0.5, as accurate after BatchNorm over three draws each (73.32 against
# 73.22, 59.10 against 58.83); ``staged`` runs each candidate of the
# two-pass search from its first masked layer (the losses, and so the
# widths, of ``full``); ``screened`` also screens the local search's moves
# on a quarter of the images; ``full`` runs every candidate through the
# whole network, as the search was first built
SEARCHES = ("one-pass", "staged", "screened", "full")
# moves of the local search after the sensitivity allocation by default: on
# ResNet-20 and ResNet-56 at MACs 0.5 (three draws each) 40 moves lifted the
# accuracy after BatchNorm by 2.5 and 0.8 points on average, as much as 100
# did within the draws' spread (docs/budget.md, "Searching around the
# allocation"), and the one-pass search with 40 moves matched the search
# with 100 on ResNet-56 (73.47 against 73.22 for full); a move costs one
# masked evaluation
REFINE_STEPS = 40
# the share of the sensitivity images the one-pass search measures its loss
# curves on (the caps and moves use them all): all of them.  Half was the
# default until the curves' images were mixed (commit 2fa616a); with them
# mixed, half gave on ResNet-56 at MACs 0.5 (three draws) 72.25 after
# BatchNorm against 73.47 with all and 73.22 for ``full``, and on ResNet-20
# (six draws) 55.56 against 56.05 and 57.47, for 1.4x fewer image-forwards
# (docs/budget-experiments.md, "What the search costs"); all the images keep
# ResNet-56 within 0.5 points of ``full`` at 5.2x fewer image-forwards
CURVE_SHARE = 1.0
# where the sensitivity allocation's loss curves come from: ``measured``, a
# masked evaluation per group and share; ``fisher``, predicted for every
# group and share from one forward and one backward pass (``budget.fisher``),
# the caps and moves still measured: 3.5x fewer image-forwards than the full
# search on MobileNet v1 at MACs 0.8, but 13.4% after the folded correction
# against 52.0 (one draw; docs/budget-experiments.md), so not the default
CURVES = ("measured", "fisher")
DEFAULT_K = 40.0  # the paper's percentile on ResNet-50/ImageNet
# the pruning methods a suite compares at one cost: the two allocations, and
# fixed rules met at the budget (uniform k, Torch-Pruning's global ranking)
METHOD_KINDS = ("uniform", "uniform-inner", "global", "sensitivity", "tp-global")
# method kinds before method strings took prune's flags, and the flags that say what each meant
LEGACY_METHODS = {
    "sensitivity": ",no-cap-search,refine-steps=0",
    "sensitivity-caps": ",refine-steps=0",
    "sensitivity-refine": "",
}
# the settings only a budget (a target) uses
BUDGET_FIELDS = (
    "allocation",
    "round_to",
    "max_prune",
    "refine_steps",
    "cap_search",
    "sensitivity_images",
    "search",
    "curve_share",
    "curves",
    "latency_runtime",
    "latency_batch",
)
# the settings that shape only the sensitivity allocation
SENSITIVITY_FIELDS = ("refine_steps", "cap_search", "sensitivity_images", "search", "curve_share", "curves")


@dataclass(frozen=True)
class PruneSpec:
    """How to prune.  ``k`` (the percentile rule, default 40 when there is
    no target) or ``target`` (``"macs=0.5"``, ``"params=0.3"``,
    ``"latency=0.6"``, a ``Target`` or ``{"macs": 0.5}``; stored as its
    text), not both.  A target's widths come from ``allocation``
    (``sensitivity``: each group's measured loss, after BatchNorm
    re-estimation on ``sensitivity_images`` images, measured as ``search``
    says (``SEARCHES``), or predicted (``curves``), then with ``cap_search``
    the cap on a group's share that loses least and ``refine_steps`` moves of
    a search; ``global``: values normalised per group, ranked across groups),
    multiples of ``round_to``, at most ``max_prune`` of a group removed; a
    latency target is measured in ``latency_runtime`` at ``latency_batch``
    images per call.  ``criterion`` ranks the channels (``CRITERIA``).
    ``folded``: the correction a folded-BatchNorm model gets after surgery
    (``mean``, ``variance``, ``refit``); ``refit``: a BatchNorm model's
    layers refitted by least squares after re-estimation."""

    k: Optional[float] = None
    target: Any = None
    criterion: str = DEFAULT_CRITERION
    allocation: str = "sensitivity"
    round_to: int = 1
    max_prune: float = 0.9
    refine_steps: int = REFINE_STEPS
    cap_search: bool = True
    sensitivity_images: int = 512
    search: str = "one-pass"
    curve_share: Optional[float] = None
    curves: str = "measured"
    latency_runtime: str = "onnxruntime"
    latency_batch: int = 1
    folded: str = "refit"
    refit: bool = False

    def __post_init__(self) -> None:
        if self.target is not None:
            if self.k is not None:
                raise ValueError(
                    "k and target are exclusive: k removes a percentile of every group, target meets a budget"
                )
            object.__setattr__(self, "target", str(parse_target(self.target)))
        else:
            object.__setattr__(self, "k", percentile(DEFAULT_K if self.k is None else self.k))
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {self.criterion!r}; choose from {', '.join(CRITERIA)}")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {', '.join(SEARCHES)}, got {self.search!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        object.__setattr__(self, "round_to", positive_int(self.round_to, "round_to"))
        object.__setattr__(self, "sensitivity_images", positive_int(self.sensitivity_images, "sensitivity_images"))
        object.__setattr__(self, "refine_steps", as_count(self.refine_steps, "refine_steps"))
        if self.curve_share is None:
            object.__setattr__(self, "curve_share", CURVE_SHARE if self.search == "one-pass" else 1.0)
        curve = self.curve_share
        if isinstance(curve, bool) or not isinstance(curve, (int, float)) or not 0 < curve <= 1:
            raise ValueError(f"curve_share must be a share in (0, 1], got {curve!r}")
        if curve < 1 and self.search != "one-pass":
            raise ValueError("curve_share measures the curves on fewer images in the one-pass search only")
        if self.curves not in CURVES:
            raise ValueError(f"curves must be one of {', '.join(CURVES)}, got {self.curves!r}")
        if curve < 1 and self.curves != "measured":
            raise ValueError("curve_share measures the curves on fewer images: predicted curves measure none")
        share = self.max_prune
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
            raise ValueError(f"max_prune must be a share in (0, 1), got {share!r}")
        for name in ("cap_search", "refit"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_latency_settings(self.latency_runtime, self.latency_batch, deploy=False)
        check_folded(self.folded)

    @property
    def target_kind(self) -> Optional[str]:
        return None if self.target is None else parse_target(self.target).kind

    @property
    def uses_sensitivity(self) -> bool:
        """Whether the widths come from measured losses (a target allocated by sensitivity)."""
        return self.target is not None and self.allocation == "sensitivity"

    def prune_fields(self) -> Dict[str, Any]:
        """The specification's own fields (a subclass adds others)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(PruneSpec)}

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any]) -> "PruneSpec":
        """From command-line options (``argparse`` destinations): those not
        given (``None``) take the defaults above; ``k`` is dropped with a
        ``target``, whose exclusion the parser already enforces."""
        given = {f.name: flags[f.name] for f in dataclasses.fields(cls) if flags.get(f.name) is not None}
        if given.get("target") is not None:
            given.pop("k", None)
        return cls(**given)

    @classmethod
    def from_method(cls, method: str, target: Any, base: Optional["PruneSpec"] = None) -> Tuple[str, "PruneSpec"]:
        """``(kind, specification)`` of a suite's method string at ``target``
        (``parse_method``).  An allocation kind means exactly ``prune
        --allocation KIND --criterion CRITERION`` with the method's flags;
        ``base`` holds the suite's shared options."""
        kind, criterion, flags = parse_method(method)
        fields = (base or cls(target=target)).prune_fields()
        # the curve share follows the method's search unless the method names it
        fields.update(k=None, target=target, criterion=criterion or "l2", curve_share=None, **flags)
        if kind in ALLOCATIONS:
            fields["allocation"] = kind
        return kind, cls(**fields)


def parse_method(method: str) -> Tuple[str, Optional[str], Dict[str, Any]]:
    """A suite's method string as ``(kind, criterion, settings)``:
    ``KIND:CRITERION`` then any ``,flag`` or ``,flag=value`` of ``prune``
    (``sensitivity:l1,refine-steps=0,no-cap-search``); ``tp-global`` takes
    no criterion."""
    head, *flags = str(method).split(",")
    kind, _, criterion = head.partition(":")
    if kind in LEGACY_METHODS and kind != "sensitivity":
        raise ValueError(f"method {method!r} is now written sensitivity:{criterion}{LEGACY_METHODS[kind]}")
    if kind not in METHOD_KINDS:
        raise ValueError(f"unknown method {method!r}: KIND:CRITERION with KIND one of {', '.join(METHOD_KINDS)}")
    if kind == "tp-global" and criterion:
        raise ValueError("tp-global ranks by Torch-Pruning's group L2 magnitude; give it without a criterion")
    if kind != "tp-global" and criterion not in CRITERIA:
        raise ValueError(f"method {method!r}: the criterion must be one of {', '.join(CRITERIA)}")
    settings: Dict[str, Any] = {}
    for flag in flags:
        settings.update(_method_flag(method, kind, flag))
    return kind, criterion or None, settings


def _method_flag(method: str, kind: str, flag: str) -> Dict[str, Any]:
    """One ``,flag[=value]`` of a method string, as the field it sets."""
    name, eq, value = flag.partition("=")
    if name == "no-cap-search" and not eq:
        field, parsed = "cap_search", False
    elif name in ("refine-steps", "round-to", "sensitivity-images") and eq:
        field, parsed = name.replace("-", "_"), _int(value, method)
    elif name in ("max-prune", "curve-share") and eq:
        field, parsed = name.replace("-", "_"), _float(value, method)
    elif name in ("search", "curves") and eq:
        field, parsed = name, value
    else:
        raise ValueError(
            f"method {method!r}: unknown flag {flag!r} (no-cap-search, refine-steps=N, round-to=N, "
            "max-prune=R, sensitivity-images=N, search=S, curve-share=R, curves=C)"
        )
    if field in SENSITIVITY_FIELDS and kind != "sensitivity":
        raise ValueError(f"method {method!r}: {name} shapes only the sensitivity allocation")
    return {field: parsed}


def _int(text: str, method: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"method {method!r}: {text!r} is not an integer") from None


def _float(text: str, method: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"method {method!r}: {text!r} is not a number") from None
