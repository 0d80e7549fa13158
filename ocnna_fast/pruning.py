"""OCNNA selection and structural surgery (SPEC section 4).

Dependency tracking is Torch-Pruning's ``DependencyGraph``: it finds the groups
of channels that must go together (residual additions, concatenations,
depthwise couplings).  What is ours: the group score from OCNNA scores, the
percentile rule, the plan that records the result, and replaying a plan on a
fresh model so a pruned network is stored as ``plan.json`` plus
``model.safetensors`` (no pickle).
"""

from __future__ import annotations

import collections
import copy
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .atomic import atomic_path, write_text_atomic
from .module_state import restore_training_flags, training_flags
from .scores import LayerScores
from .validate import percentile

__all__ = [
    "prune",
    "apply_plan",
    "save_pruned",
    "load_pruned",
    "read_plan",
    "set_model_builder",
    "out_channel_convs",
    "count_params",
    "group_scores",
    "select_channels",
    "select_top",
    "kept_count",
    "SELECTION_RULES",
    "FAMILY",
    "layer_values",
    "feeds_output",
    "channel_groups",
    "dependency_graph",
]

PLAN_FORMAT = "ocnna-fast-plan"
PLAN_VERSION = 1
PLAN_DIGEST = "plan_sha256"
PathLike = Union[str, os.PathLike]


def _tp():
    try:
        import torch_pruning as tp
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError("pruning needs Torch-Pruning: pip install torch-pruning") from exc
    return tp


def count_params(model: nn.Module) -> int:
    """All parameters, classifier included (the denominator of the RPR)."""
    return sum(p.numel() for p in model.parameters())


def select_channels(group_score: np.ndarray, k: float, name: Optional[str] = None) -> np.ndarray:
    """Indices (ascending) to keep under SPEC 4's percentile rule: as many
    channels as lie at or above the k-th percentile (NumPy ``percentile``,
    linear interpolation) of distinct scores, ``kept_count(width, k)``, taken
    in order of score, ties broken by the lower channel index; never none.

    The count does not depend on ties: a threshold test (``score >=
    percentile``) would keep every tied channel, so a layer whose scores are
    all equal (one scoring image, or many dead filters) would lose nothing
    whatever ``k``.  Non-finite scores are refused (a NaN would make the
    order meaningless), naming the group ``name``."""
    s = _finite_vector(group_score, name)
    return select_top(s, kept_count(s.size, k), name=name)


def _finite_vector(values: Any, name: Optional[str]) -> np.ndarray:
    s = np.asarray(values, dtype=np.float64)
    where = f"group {name!r}" if name else "group"
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"{where}: scores must be a non-empty 1-D array")
    if not np.all(np.isfinite(s)):
        bad = np.flatnonzero(~np.isfinite(s))
        raise ValueError(f"{where}: non-finite scores at channels {bad[:8].tolist()}; rescore the layer")
    return s


SELECTION_RULES = ("percentile", "count")


def kept_count(width: int, k: float) -> int:
    """How many of ``width`` distinct values the percentile rule keeps: those
    at or above position ``k/100 * (width - 1)`` of the sorted values."""
    return width - int(np.ceil(_check_k(k) / 100.0 * (width - 1) - 1e-9))


def select_top(values: np.ndarray, count: int, name: Optional[str] = None) -> np.ndarray:
    """Indices (ascending) of the ``count`` highest values, ties broken by the
    lower index; non-finite values refused as in ``select_channels``."""
    s = _finite_vector(values, name)
    if not 1 <= count <= s.size:
        raise ValueError(f"cannot keep {count} of {s.size} channels")
    order = np.lexsort((np.arange(s.size), -s))  # by value descending, then index
    return np.sort(order[:count])


# OCNNA-family rankings of one layer's filters, all from the scorer's streamed
# statistics (higher = keep).  "ocnna" is the paper's coefficient of
# variation; the others keep the filter's scale, which the CV divides away.
FAMILY = {
    "ocnna": lambda ls: ls.score,
    "mean-energy": lambda ls: ls.mean,
    # sqrt(E[F^2]): the root-mean-square norm of the filter's PCA-transformed
    # map over the images, i.e. the output energy the filter carries
    "ocnna-rms": lambda ls: torch.sqrt(ls.mean**2 + ls.std**2),
}


def layer_values(ls: LayerScores, criterion: str = "ocnna") -> np.ndarray:
    """One layer's per-filter values under an OCNNA-family ``criterion``."""
    if criterion not in FAMILY:
        raise ValueError(f"criterion must be one of {', '.join(FAMILY)}, got {criterion!r}")
    return FAMILY[criterion](ls).double().numpy()


def group_scores(members: Sequence[Tuple[LayerScores, Sequence[int]]], criterion: str = "ocnna") -> np.ndarray:
    """SPEC 4: a group with one scored layer ranks by that layer's values; a
    group spanning several layers (our reading) by the mean over them of each
    layer's values divided by that layer's mean value.  ``criterion`` picks
    the values (``FAMILY``; default OCNNA's score)."""
    if len(members) == 1:
        ls, idxs = members[0]
        return layer_values(ls, criterion)[list(idxs)]
    parts = []
    for ls, idxs in members:
        s = layer_values(ls, criterion)
        m = s.mean()
        parts.append(s[list(idxs)] / m if m > 0 else np.zeros(len(idxs)))
    return np.mean(parts, axis=0)


def _check_k(k: float) -> float:
    return percentile(k)


def _default_ignored(model: nn.Module) -> List[nn.Module]:
    hook = getattr(model, "ocnna_ignored_layers", None)
    return list(hook()) if callable(hook) else []


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor):
    """Torch-Pruning's dependency graph of ``model``, with the pruning
    functions the model declares for its own modules (``ocnna_pruners()``,
    e.g. the CIFAR ResNets' option-A shortcut)."""
    tp = _tp()
    hook = getattr(model, "ocnna_pruners", None)
    custom = hook() if callable(hook) else None
    try:
        DG = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, customized_pruners=custom)
    except ZeroDivisionError as exc:
        # Torch-Pruning's index mapping of a reshape divides by the channels
        # it can follow; a reshape that interleaves channels leaves none
        raise ValueError(
            f"{type(model).__name__}: Torch-Pruning cannot map channels through a reshape of the channel axis "
            "(a channel shuffle: view -> transpose -> view, as in ShuffleNet, or a reshape that changes the "
            "channel count), so this model cannot be pruned structurally. score() still works on it; to prune, "
            "apply prune() to sub-modules without that reshape, or replace it with a module Torch-Pruning can "
            "follow."
        ) from exc
    _refuse_untraced(model, example_inputs, DG)
    return DG


def _refuse_untraced(model: nn.Module, example_inputs: torch.Tensor, DG: Any) -> None:
    """Torch-Pruning traces back from the outputs, so a conv or linear layer
    that runs but whose result the model never uses is not in the graph:
    pruning its input channels' producer would leave it with the old width
    (and a shape error at the next forward).  Such layers are refused by name."""
    ran: List[str] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: ran.append(names[mod]))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m not in DG.module2node
    ]
    if not hooks:
        return
    flags = training_flags(model)
    try:
        with torch.no_grad():
            model.eval()(example_inputs)
    finally:
        for h in hooks:
            h.remove()
        restore_training_flags(flags)
    if ran:
        raise ValueError(
            f"layers {sorted(set(ran))[:5]} compute outputs the model never uses, so Torch-Pruning cannot follow "
            "their channels and pruning would break them; remove them from forward() (or use their outputs)"
        )


def feeds_output(group) -> bool:
    """Whether a Torch-Pruning group's channels reach the model's output
    unchanged in number (e.g. a conv classifier's logits): such channels are
    never pruned, whatever the layer type."""
    return any(type(dep.target.module).__name__ == "_OutputOp" for dep, _ in group)


def channel_groups(group) -> int:
    """How many equal blocks the group's channels split into because a
    grouped (not depthwise) conv produces or consumes them: a removal must
    take the same positions from every block, or the grouped conv cannot
    be rebuilt.  1 when no grouped conv is involved."""
    blocks = 1
    for dep, _ in group:
        m = dep.target.module
        if isinstance(m, nn.Conv2d) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels):
            blocks = int(np.lcm(blocks, m.groups))
    return blocks


def _select(values: np.ndarray, k: float, rule: str, name: str, blocks: int) -> np.ndarray:
    """Kept channel indices.  With ``blocks > 1`` a position within a block is
    ranked by its mean value over the blocks and kept or removed in all of
    them (how grouped convs stay valid)."""
    width = len(values)
    if blocks > 1:
        if width % blocks:
            raise ValueError(f"group {name!r}: {width} channels do not split into {blocks} equal blocks")
        per = values.reshape(blocks, width // blocks).mean(axis=0)
        keep = _select(per, k, rule, name, 1)
        return np.sort(np.concatenate([keep + b * (width // blocks) for b in range(blocks)]))
    return select_channels(values, k, name=name)


def out_channel_convs(group: Any, dg: Any = None) -> Iterator[Tuple[nn.Conv2d, List[int]]]:
    """``(conv, channel indices)`` of each conv of a Torch-Pruning group whose
    output channels the group removes over its whole width: the members whose
    scores rank the group (SPEC 4).  Without ``dg`` (a group built outside a
    DependencyGraph) every conv over the whole width counts."""
    width = len(group[0][1])
    for dep, idxs in group:
        mod = dep.target.module
        if not isinstance(mod, nn.Conv2d) or len(idxs) != width:
            continue
        if dg is not None and not dg.is_out_channel_pruning_fn(dep.handler):
            continue
        yield mod, [int(i) for i in idxs]


def prune(
    model: nn.Module,
    scores: Optional[Mapping[str, LayerScores]],
    k: float,
    example_inputs: torch.Tensor,
    ignored_layers: Optional[Iterable[Union[str, nn.Module]]] = None,
    *,
    importance: Union[None, Callable[[Any], Any], Mapping[str, Any]] = None,
    rule: str = "percentile",
    criterion: str = "ocnna",
) -> Tuple[nn.Module, Dict[str, Any]]:
    """A physically smaller copy of ``model`` with OCNNA's selection applied.

    Args:
        model: the trained model (not modified).
        scores: ``Scores`` (or any mapping name -> LayerScores) for its convs.
        k: percentile in [0, 100): in each channel group, channels scoring
            below the k-th percentile are removed (``k=0`` keeps everything).
        example_inputs: a batch the model accepts, used to trace dependencies.
        ignored_layers: modules or names whose output channels stay (the
            classifier's outputs are never pruned: only convs are roots).
            Default: what the model's ``ocnna_ignored_layers()`` names, if any.
        importance: rank each group by another criterion instead of the
            scores: a callable taking a Torch-Pruning group (of the copy being
            pruned) and returning one value per channel of its root, higher =
            keep (any ``torch_pruning.importance`` object qualifies), or a
            mapping from each group root's name to those values.  The
            groups pruned are the same as with scores: those holding a
            prunable conv (``scores`` may then be ``None``).
        criterion: which of the scores' statistics rank the filters
            (``FAMILY``): ``"ocnna"`` (the paper's std/mean, default),
            ``"mean-energy"`` or ``"ocnna-rms"`` (see docs/scoring.md).
        rule: ``"percentile"`` (SPEC 4, default) or ``"count"``, which
            since ties are broken by channel index select the same channels
            (``"count"`` stays accepted for code written before).

    Returns:
        ``(pruned_model, plan)``; ``plan`` is JSON-serialisable and
        ``apply_plan(base, plan)`` rebuilds the same architecture.
    """
    k = _check_k(k)
    if criterion not in FAMILY:
        raise ValueError(f"criterion must be one of {', '.join(FAMILY)}, got {criterion!r}")
    if rule not in SELECTION_RULES:
        raise ValueError(f"rule must be one of {SELECTION_RULES}, got {rule!r}")
    if scores is None and importance is None:
        raise ValueError("pass scores, or an importance to rank the groups by")
    if not isinstance(example_inputs, torch.Tensor):
        raise TypeError("example_inputs must be a tensor batch the model accepts")
    pruned = copy.deepcopy(model).eval()
    names = {m: n for n, m in pruned.named_modules()}
    by_name = dict(pruned.named_modules())
    ignored = _default_ignored(pruned) if ignored_layers is None else []
    for item in ignored_layers or []:
        if isinstance(item, str):
            if item not in by_name:
                raise ValueError(f"ignored layer {item!r} is not a module of the model")
            ignored.append(by_name[item])
        else:  # a module of the original model: map it to the copy by name
            name = {m: n for n, m in model.named_modules()}.get(item)
            if name is None:
                raise ValueError(f"ignored layer {item!r} is not a module of the model")
            ignored.append(by_name[name])
    if scores is None:  # an importance ranks; the prunable convs say which groups are pruned
        scores = {n: None for n, m in by_name.items() if isinstance(m, nn.Conv2d) and m.groups == 1}
    missing = [n for n in scores if n not in by_name]
    if missing:
        raise ValueError(f"scores name layers the model does not have: {missing[:5]}")

    tp = _tp()
    DG = dependency_graph(pruned, example_inputs)
    decisions = []
    for group in DG.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d]):
        root_dep, root_idxs = group[0]
        root = root_dep.target.module
        width = len(root_idxs)
        members = []
        for mod, idxs in out_channel_convs(group, DG):
            name = names.get(mod)
            if name in scores:
                ls = scores[name]
                if ls is not None and ls.num_channels != mod.out_channels:
                    raise ValueError(
                        f"scores for {name!r} have {ls.num_channels} channels, the layer has {mod.out_channels}"
                    )
                members.append((ls, idxs))
        if not members:
            continue  # no scored conv decides this group: it stays whole
        if feeds_output(group):
            continue  # the model's outputs (a conv classifier's logits) keep their number
        if importance is not None:
            values = importance.get(names[root]) if isinstance(importance, Mapping) else importance(group)
            if values is None:
                raise ValueError(f"the importance returned no values for group {names[root]!r}")
            values = torch.as_tensor(values).detach().double().cpu().numpy().reshape(-1)
            if values.shape != (width,):
                raise ValueError(
                    f"the importance gave {values.shape[0]} values for group {names[root]!r} of {width} channels"
                )
        else:
            values = group_scores(members, criterion)
        blocks = channel_groups(group)
        if k > 0 and width > 1 and np.ptp(values) == 0:
            warnings.warn(
                f"group {names[root]!r}: all {width} channels score the same ({values[0]:g}), so the "
                "ones removed are the highest-numbered; score on more images (the coefficient of "
                "variation of one image is 0) or use another criterion",
                stacklevel=2,
            )
        keep = _select(values, k, rule, names[root], blocks)
        removed = sorted(set(range(width)) - set(keep.tolist()))
        decision = {"root": names[root], "channels": width, "removed": removed}
        if blocks > 1:
            decision["blocks"] = blocks  # removed positions repeat in each block (a grouped conv)
        decisions.append(decision)

    maps = _ChannelMaps(pruned)
    for d in decisions:
        if d["removed"]:
            root = by_name[d["root"]]
            g = DG.get_pruning_group(root, tp.prune_conv_out_channels, idxs=d["removed"])
            if not DG.check_pruning_group(g):
                raise ValueError(f"Torch-Pruning refused to prune group rooted at {d['root']!r}")
            maps.record(g, DG, names)
            g.prune()
    plan = _make_plan(model, pruned, decisions, k, example_inputs)
    plan["channel_maps"] = maps.as_dict()
    _verify(pruned, example_inputs, model)
    return pruned, plan


class _ChannelMaps:
    """Which original input channels / features each conv and linear layer
    lost, and which outputs it kept, in the *original* numbering.  Torch-Pruning
    gives each group's indices in the numbering of the moment (a layer fed by a
    concat may lose channels to several groups), so positions are tracked."""

    def __init__(self, model: nn.Module) -> None:
        # per layer, the original index of each input / output position left
        self.inputs: Dict[str, List[int]] = {}
        self.outputs: Dict[str, List[int]] = {}
        for n, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                self.inputs[n], self.outputs[n] = list(range(m.in_channels)), list(range(m.out_channels))
            elif isinstance(m, nn.Linear):
                self.inputs[n], self.outputs[n] = list(range(m.in_features)), list(range(m.out_features))
        self._in_widths = {n: len(v) for n, v in self.inputs.items()}

    def record(self, group, DG, names) -> None:
        for dep, idxs in group:
            name = names.get(dep.target.module)
            if name not in self.inputs:
                continue
            if DG.is_out_channel_pruning_fn(dep.handler):
                side = self.outputs
            elif DG.is_in_channel_pruning_fn(dep.handler):
                side = self.inputs
            else:
                continue
            gone = {int(i) for i in idxs}
            side[name] = [p for j, p in enumerate(side[name]) if j not in gone]

    def as_dict(self) -> Dict[str, Dict[str, List[int]]]:
        """Per layer whose inputs were removed: ``removed_inputs`` and
        ``kept_outputs``, in the original numbering."""
        return {
            n: {
                "removed_inputs": sorted(set(range(self._in_widths[n])) - set(kept)),
                "kept_outputs": self.outputs[n],
            }
            for n, kept in self.inputs.items()
            if len(kept) < self._in_widths[n]
        }


def _layer_table(model: nn.Module) -> Dict[str, Dict[str, int]]:
    table = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            table[n] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            table[n] = {"in": m.in_features, "out": m.out_features}
    return table


def _make_plan(base: nn.Module, pruned: nn.Module, decisions, k, example_inputs) -> Dict[str, Any]:
    before, after = _layer_table(base), _layer_table(pruned)
    kept = {}
    for d in decisions:
        kept[d["root"]] = sorted(set(range(d["channels"])) - set(d["removed"]))
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "k": k,
        "input_shape": list(example_inputs.shape[1:]),
        "groups": decisions,
        "kept": kept,  # kept output channel indices per group root
        "layers_before": before,
        "layers_after": after,
        "params_before": count_params(base),
        "params_after": count_params(pruned),
    }


def _verify(pruned: nn.Module, example_inputs: torch.Tensor, base: nn.Module) -> None:
    flags = training_flags(base)  # the caller's model leaves as it came
    try:
        with torch.no_grad():
            out = pruned(example_inputs)
            ref = base.eval()(example_inputs)
    finally:
        restore_training_flags(flags)
    if isinstance(out, torch.Tensor) and out.shape != ref.shape:
        raise RuntimeError(f"pruned model output shape {tuple(out.shape)} differs from {tuple(ref.shape)}")


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
    if not isinstance(after, dict) or not all(
        isinstance(n, str) and isinstance(t, dict) and all(isinstance(f, str) and _is_int(v, 1) for f, v in t.items())
        for n, t in after.items()
    ):
        raise ValueError("malformed pruning plan: 'layers_after' must map layer names to positive widths")
    k = plan.get("k")
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 <= k < 100:
        raise ValueError(f"malformed pruning plan: 'k' must be a percentile in [0, 100), got {k!r}")
    return plan


def apply_plan(base_model: nn.Module, plan: Dict[str, Any]) -> nn.Module:
    """Rebuilds the pruned architecture from an unpruned model and a plan
    (the kept weights come along; load trained ones with ``load_state_dict``).
    A plan that does not fit the model is a ``ValueError``."""
    plan = _check_plan(plan)
    tp = _tp()
    model = copy.deepcopy(base_model).eval()
    by_name = dict(model.named_modules())
    example = torch.zeros(1, *plan["input_shape"])
    DG = dependency_graph(model, example)
    for g in plan["groups"]:
        root = by_name.get(g["root"])
        if not isinstance(root, nn.Conv2d) or root.out_channels != g["channels"]:
            raise ValueError(f"plan does not fit this model: group root {g['root']!r}")
        if g["removed"]:
            DG.get_pruning_group(root, tp.prune_conv_out_channels, idxs=list(g["removed"])).prune()
    got = _layer_table(model)
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
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(d / "model.safetensors") as tmp:
        save_file(state, tmp)
        digest = _file_sha256(tmp)
    doc = dict(plan)
    doc.pop(PLAN_DIGEST, None)
    doc["weights_sha256"] = digest
    if extra:
        doc["model"] = extra
    doc[PLAN_DIGEST] = _plan_digest(doc)
    write_text_atomic(d / "plan.json", json.dumps(doc, indent=1))
    return d


def _plan_digest(doc: Dict[str, Any]) -> str:
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
    if _plan_digest(doc) != want:
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


def _file_sha256(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    if _file_sha256(d / "model.safetensors") != want:
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
    state._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"model.safetensors does not match plan.json: {exc}") from exc
    return model.eval()
