"""Pruning plans on disk: ``plan.json`` (what was removed, the layer widths
after, a digest of its own contents and of the weights file) beside
``model.safetensors``.  A plan is replayed on a fresh unpruned model, so a
pruned network is stored without pickle, and loading one never runs code
the files name."""

from __future__ import annotations

import collections
import copy
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import nn

from .._util.atomic import save_tensors, write_text_atomic
from ..data.fetch import sha256_of
from ..selection.groups import dependency_graph, torch_pruning

__all__ = [
    "PLAN_FORMAT",
    "PLAN_VERSION",
    "PLAN_DIGEST",
    "plan_digest",
    "floating_dtype",
    "MAX_INPUT_VALUES",
    "layer_table",
    "apply_plan",
    "save_pruned",
    "read_plan",
    "load_pruned",
    "set_model_builder",
]

PathLike = Union[str, os.PathLike]


PLAN_FORMAT = "ocnna-fast-plan"
# the most values one example image of a plan may hold: loading a plan builds
# one and traces the model on it, so this bounds what a file can make it allocate
MAX_INPUT_VALUES = 1 << 24


PLAN_VERSION = 1


PLAN_DIGEST = "plan_sha256"


def layer_table(model: nn.Module) -> Dict[str, Dict[str, int]]:
    table = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            table[n] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            table[n] = {"in": m.in_features, "out": m.out_features}
    return table


def _is_int(v: Any, minimum: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _check_plan(plan: Any) -> Dict[str, Any]:
    """Every field ``apply_plan`` reads, with its type and range: a plan of
    the wrong shape is a ``ValueError`` naming the field, never a crash
    deeper in the surgery."""
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise ValueError("not an ocnna-fast pruning plan")
    if plan.get("version") != PLAN_VERSION:
        raise ValueError(f"unsupported plan version {plan.get('version')!r}")
    groups, shape, after = plan.get("groups"), plan.get("input_shape"), plan.get("layers_after")
    if not isinstance(groups, list):
        raise ValueError("malformed pruning plan: 'groups' must be a list")
    for g in groups:
        if not (
            isinstance(g, dict)
            and isinstance(g.get("root"), str)
            and _is_int(g.get("channels"), 1)
            and isinstance(g.get("removed"), list)
            and all(_is_int(i) and i < g["channels"] for i in g["removed"])
            and len(set(g["removed"])) == len(g["removed"]) < g["channels"]
            and _is_int(g.get("blocks", 1), 1)
        ):
            raise ValueError(f"malformed pruning plan: group entry {str(g)[:200]}")
    if not (isinstance(shape, list) and shape and all(_is_int(d, 1) and d <= 1 << 16 for d in shape)):
        raise ValueError(f"malformed pruning plan: 'input_shape' must be a list of positive sizes, got {shape!r}")
    if math.prod(shape) > MAX_INPUT_VALUES:
        raise ValueError(
            f"pruning plan's 'input_shape' {shape} asks for {math.prod(shape):,} values per image; a plan may ask "
            f"for at most {MAX_INPUT_VALUES:,} (3x2364x2364), so it is refused before anything is allocated"
        )
    if not isinstance(after, dict) or not all(
        isinstance(n, str) and isinstance(t, dict) and all(isinstance(f, str) and _is_int(v, 1) for f, v in t.items())
        for n, t in after.items()
    ):
        raise ValueError("malformed pruning plan: 'layers_after' must map layer names to positive widths")
    k = plan.get("k")
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 <= k < 100:
        raise ValueError(f"malformed pruning plan: 'k' must be a percentile in [0, 100), got {k!r}")
    return plan


def floating_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's floating-point weights (float32 for a model without any)."""
    return next((t.dtype for t in model.state_dict().values() if t.is_floating_point()), torch.float32)


def apply_plan(base_model: nn.Module, plan: Dict[str, Any]) -> nn.Module:
    """Rebuilds the pruned architecture from an unpruned model and a plan
    (the kept weights come along; load trained ones with ``load_state_dict``).
    A plan that does not fit the model is a ``ValueError``."""
    plan = _check_plan(plan)
    tp = torch_pruning()
    model = copy.deepcopy(base_model).eval()
    by_name = dict(model.named_modules())
    example = torch.zeros(1, *plan["input_shape"], dtype=floating_dtype(model))  # traced in the model's precision
    DG = dependency_graph(model, example)
    for g in plan["groups"]:
        root = by_name.get(g["root"])
        if not isinstance(root, nn.Conv2d) or root.out_channels != g["channels"]:
            raise ValueError(f"plan does not fit this model: group root {g['root']!r}")
        if g["removed"]:
            DG.get_pruning_group(root, tp.prune_conv_out_channels, idxs=list(g["removed"])).prune()
    got = layer_table(model)
    if got != plan["layers_after"]:
        want = plan["layers_after"]
        only_plan = sorted(set(want) - set(got))
        only_model = sorted(set(got) - set(want))
        shapes = [n for n in want if n in got and got[n] != want[n]]
        parts = [
            f"{label}: {names[:3]}"
            for label, names in (
                ("layers only in the plan", only_plan),
                ("layers only in the model", only_model),
                ("layers of other widths", shapes),
            )
            if names
        ]
        raise ValueError("plan does not fit this model (another architecture?); " + "; ".join(parts))
    return model


def save_pruned(
    directory: PathLike, model: nn.Module, plan: Dict[str, Any], extra: Optional[Dict[str, Any]] = None
) -> Path:
    """Writes ``model.safetensors`` and ``plan.json`` (each atomically; the
    plan records the sha256 of the weights file, which ``load_pruned`` checks)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    digest = save_tensors(state, d / "model.safetensors")
    doc = dict(plan)
    doc.pop(PLAN_DIGEST, None)
    doc["weights_sha256"] = digest
    if extra:
        doc["model"] = extra
    doc[PLAN_DIGEST] = plan_digest(doc)
    write_text_atomic(d / "plan.json", json.dumps(doc, indent=1))
    return d


def plan_digest(doc: Dict[str, Any]) -> str:
    """sha256 of a plan document without its own digest, in a canonical JSON
    form (sorted keys; Python's float repr round-trips exactly)."""
    body = {k: v for k, v in doc.items() if k != PLAN_DIGEST}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a pruning plan must be plain JSON without NaN or infinity ({exc})") from exc
    return hashlib.sha256(text.encode()).hexdigest()


def read_plan(directory: PathLike) -> Dict[str, Any]:
    """``plan.json`` of a folder written by ``save_pruned``, checked against
    the digest it was saved with and validated field by field.  What it says
    is data only: nothing it names is imported or called."""
    path = Path(directory) / "plan.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: --pruned takes the pruned/ folder written by 'prune'") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not an ocnna-fast pruning plan")
    want = doc.get(PLAN_DIGEST)
    if not isinstance(want, str):
        raise ValueError(f"{path} carries no {PLAN_DIGEST} (written by an older ocnna-fast, or edited): prune again")
    if plan_digest(doc) != want:
        raise ValueError(
            f"{path} was edited or damaged: its contents do not match the digest it was saved with; prune again"
        )
    spec = doc.get("model")
    if spec is not None and not (
        isinstance(spec, dict)
        and isinstance(spec.get("arch", ""), str)
        and _is_int(spec.get("num_classes", 1), 1)
        and (spec.get("input_size") is None or _is_int(spec["input_size"], 1))
    ):
        raise ValueError(f"{path}: malformed 'model' entry {str(spec)[:200]}")
    return _check_plan(doc)


# How load_pruned builds the base model a plan names when none is passed:
# (arch, num_classes) -> model.  The package wires the model zoo in here
# (ocnna_fast/__init__.py), so surgery never imports the zoo.
_model_builder: Optional[Callable[[str, int], nn.Module]] = None


def set_model_builder(builder: Optional[Callable[[str, int], nn.Module]]) -> None:
    """Sets what ``load_pruned`` calls to rebuild a plan's architecture when
    no ``base_model`` is given (default: the package's model zoo, whose names
    include ``module:factory`` specs)."""
    global _model_builder
    _model_builder = builder


def load_pruned(directory: PathLike, base_model: Optional[nn.Module] = None) -> nn.Module:
    """Loads a model saved by ``save_pruned``: replays ``plan.json`` on
    ``base_model`` and loads ``model.safetensors`` strictly.  Damaged or
    mismatched files are a ``ValueError``.

    Without ``base_model`` the architecture is the zoo model the plan names;
    a plan pruned from a user's ``module:factory`` model is refused then:
    loading a file never imports or calls code the file chooses, so build
    the unpruned model yourself and pass it as ``base_model``."""
    from safetensors.torch import load_file

    d = Path(directory)
    plan = read_plan(d)
    if base_model is None:
        spec = plan.get("model") or {}
        arch = spec.get("arch")
        if not arch:
            raise ValueError("plan.json names no architecture; pass base_model")
        if ":" in arch:
            raise ValueError(
                f"{d} was pruned from the user model {arch!r}; loading a folder never imports or calls code "
                f"it names: pass base_model= (the unpruned model), or on the command line --model {arch}"
            )
        if _model_builder is None:
            raise ValueError("no model builder is set to rebuild the plan's architecture; pass base_model")
        base_model = _model_builder(arch, spec.get("num_classes", 10))
    want = plan.get("weights_sha256")
    if not isinstance(want, str):
        raise ValueError(f"{d / 'plan.json'} does not name the weights it belongs to (no weights_sha256)")
    if not (d / "model.safetensors").is_file():
        raise FileNotFoundError(f"{d / 'model.safetensors'} not found")
    if sha256_of(d / "model.safetensors") != want:
        raise ValueError(
            f"{d / 'model.safetensors'} is not the weights file {d / 'plan.json'} was saved with "
            "(sha256 differs): the two files come from different runs, or one is damaged"
        )
    model = apply_plan(base_model, plan)
    try:
        state = load_file(str(d / "model.safetensors"))
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot read {d / 'model.safetensors'}: {exc}") from exc
    # safetensors keeps no module versions (state_dict()._metadata); some
    # modules (torchvision's MNASNet) refuse a state without them.  The
    # weights were saved from this same code, so its own versions apply.
    state = collections.OrderedDict(state)
    saved = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(saved) == 1 and saved != {floating_dtype(model)}:
        model.to(saved.pop())  # the weights keep the precision they were saved in (a half model stays half)
    state._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"model.safetensors does not match plan.json: {exc}") from exc
    return model.eval()
