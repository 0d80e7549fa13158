"""State of a scoring run that outlives one process: checkpoints on disk and
the exact merge of accumulators across ``torch.distributed`` ranks."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from .._native import _C
from .._util import validate
from .._util.atomic import save_tensors
from .stats import FilterStats

__all__ = ["model_fingerprint", "save_checkpoint", "load_checkpoint", "merge_across_ranks"]

_FORMAT = "ocnna-fast-score-checkpoint"
_VERSION = "2"  # 2: a sha256 of the contents in the metadata


def model_fingerprint(model: nn.Module, stats: Dict[str, FilterStats], n_components: Any) -> Dict[str, Any]:
    """What a checkpoint must match: the layers scored, their widths, the
    n_components option and a digest of every parameter and buffer."""
    return {
        "model": type(model).__name__,
        "layers": [[n, st.num_channels] for n, st in stats.items()],
        "n_components": n_components,
        "weights_sha256": validate.tensors_sha256(model.state_dict()),
    }


def save_checkpoint(
    path: str, stats: Dict[str, FilterStats], fingerprint: Dict[str, Any], batches: int, images: int
) -> None:
    """Writes accumulators and position to ``path`` atomically (a temporary
    file in the same folder, flushed to disk, then renamed over the old one),
    with a sha256 of the contents that ``load_checkpoint`` checks."""
    tensors = {}
    for i, st in enumerate(stats.values()):
        sd = st.state_dict()
        tensors[f"{i}.count"], tensors[f"{i}.mean"], tensors[f"{i}.m2"] = sd["count"], sd["mean"], sd["m2"]
        tensors[f"{i}.images"] = torch.tensor([sd["images"]], dtype=torch.int64)
    meta = {
        "format": _FORMAT,
        "version": _VERSION,
        "fingerprint": json.dumps(fingerprint, sort_keys=True),
        "batches": str(batches),
        "images": str(images),
    }
    meta["sha256"] = validate.tensors_sha256(tensors, list(meta.items()))
    save_tensors(tensors, path, metadata=meta)


def _count_field(meta: Dict[str, str], key: str, path: str) -> int:
    text = meta.get(key)
    if not isinstance(text, str) or not text.isdigit():
        raise ValueError(f"checkpoint {path}: {key} must be a non-negative integer, got {text!r}")
    return int(text)


def load_checkpoint(path: str, stats: Dict[str, FilterStats], fingerprint: Dict[str, Any]) -> Tuple[int, int]:
    """Restores accumulators from ``path`` into ``stats`` and returns
    ``(batches, images)`` already done.  A checkpoint of another model, layer
    set or n_components, or a damaged or tampered file, is a ``ValueError``
    and leaves ``stats`` untouched (everything is read and checked before
    anything is set)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors' own errors for truncated or corrupted files
        raise ValueError(f"cannot read scoring checkpoint {path}: {exc}") from exc
    if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
        raise ValueError(f"{path} is not an ocnna-fast scoring checkpoint")
    validate.exact_keys(
        meta, ("format", "version", "fingerprint", "batches", "images", "sha256"), f"checkpoint {path}: metadata"
    )
    validate.check_digest(tensors, meta, f"checkpoint {path}")
    try:
        theirs = json.loads(meta["fingerprint"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"checkpoint {path}: malformed fingerprint ({exc})") from exc
    if not isinstance(theirs, dict) or theirs != json.loads(json.dumps(fingerprint, sort_keys=True)):
        theirs = theirs if isinstance(theirs, dict) else {}
        what = [k for k in fingerprint if theirs.get(k) != fingerprint[k]]
        raise ValueError(
            f"checkpoint {path} was written by a different run (differs in: {', '.join(what) or 'format'}); "
            "delete it or score with the same model, layers and n_components"
        )
    batches, images = _count_field(meta, "batches", path), _count_field(meta, "images", path)
    validate.exact_keys(
        tensors,
        [f"{i}.{k}" for i in range(len(stats)) for k in ("count", "mean", "m2", "images")],
        f"checkpoint {path}: tensors",
    )
    states: List[Dict[str, Any]] = []
    for i, (name, st) in enumerate(stats.items()):
        n_img = tensors[f"{i}.images"]
        if n_img.dtype != torch.int64 or tuple(n_img.shape) != (1,) or not 0 <= int(n_img[0]) <= images:
            raise ValueError(f"checkpoint {path}: layer {name!r} has an invalid image count")
        s = st.state_with(tensors[f"{i}.count"], tensors[f"{i}.mean"], tensors[f"{i}.m2"], int(n_img[0]))
        FilterStats(st.num_channels, st.n_components, name=name, statistic=st.statistic).load_state_dict(
            s
        )  # checks only
        states.append(s)
    if images > 0 and batches == 0:
        raise ValueError(f"checkpoint {path} is inconsistent: {images} images in 0 batches")
    for st, s in zip(stats.values(), states):
        st.load_state_dict(s)
    return batches, images


def merge_across_ranks(stats: Dict[str, FilterStats]) -> None:
    """Replaces every rank's accumulators with the exact (Chan) merge of all
    ranks', merged in rank order so every rank ends with identical numbers.
    NCCL needs the tensors on this rank's GPU; gloo takes them on the CPU."""
    import torch.distributed as dist

    world = dist.get_world_size()
    if world == 1:
        return
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    layout = [st.num_channels for st in stats.values()]
    mine = torch.tensor([len(layout), sum(layout)], dtype=torch.int64, device=device)
    shapes = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(shapes, mine)
    if any(not torch.equal(s, mine) for s in shapes):
        raise ValueError(
            "ranks score different layer sets; every rank must call score() with the same model and layers"
        )
    parts = []
    for st in stats.values():
        sd = st.state_dict()
        parts += [sd["count"], sd["mean"], sd["m2"], torch.tensor([float(sd["images"])], dtype=torch.float64)]
    local = torch.cat(parts).to(device)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local)
    gathered = [g.cpu() for g in gathered]
    offset = 0
    for st, c in zip(stats.values(), layout):
        cnt = torch.zeros(c, dtype=torch.float64)
        mean = torch.zeros(c, dtype=torch.float64)
        m2 = torch.zeros(c, dtype=torch.float64)
        images = 0
        for g in gathered:
            part = g[offset : offset + 3 * c + 1]
            _C.merge(
                cnt.numpy(),
                mean.numpy(),
                m2.numpy(),
                part[:c].clone().numpy(),
                part[c : 2 * c].clone().numpy(),
                part[2 * c : 3 * c].clone().numpy(),
            )
            images += int(part[3 * c])
        offset += 3 * c + 1
        st.load_state_dict(st.state_with(cnt, mean, m2, images))
