"""State of a scoring run that outlives one process: checkpoints on disk and
the exact merge of accumulators across ``torch.distributed`` ranks."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ._native import _C
from .stats import FilterStats

__all__ = ["model_fingerprint", "save_checkpoint", "load_checkpoint", "merge_across_ranks"]

_FORMAT = "ocnna-fast-score-checkpoint"
_VERSION = "1"


def model_fingerprint(model: nn.Module, stats: Dict[str, FilterStats], n_components: Any) -> Dict[str, Any]:
    """What a checkpoint must match: the layers scored, their widths, the
    n_components option and a digest of every parameter and buffer."""
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return {
        "model": type(model).__name__,
        "layers": [[n, st.num_channels] for n, st in stats.items()],
        "n_components": n_components,
        "weights_sha256": h.hexdigest(),
    }


def save_checkpoint(path: str, stats: Dict[str, FilterStats], fingerprint: Dict[str, Any], batches: int,
                    images: int) -> None:
    """Writes accumulators and position to ``path`` atomically: a temporary file
    in the same folder, flushed to disk, then renamed over the old one."""
    from safetensors.torch import save_file

    tensors = {}
    for i, st in enumerate(stats.values()):
        sd = st.state_dict()
        tensors[f"{i}.count"], tensors[f"{i}.mean"], tensors[f"{i}.m2"] = sd["count"], sd["mean"], sd["m2"]
        tensors[f"{i}.images"] = torch.tensor([sd["images"]], dtype=torch.int64)
    meta = {"format": _FORMAT, "version": _VERSION, "fingerprint": json.dumps(fingerprint, sort_keys=True),
            "batches": str(batches), "images": str(images)}
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(tensors, tmp, metadata=meta)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str, stats: Dict[str, FilterStats], fingerprint: Dict[str, Any]) -> Tuple[int, int]:
    """Restores accumulators from ``path`` into ``stats`` and returns
    ``(batches, images)`` already done.  A checkpoint of another model, layer
    set or n_components, or a damaged file, is a ``ValueError`` and leaves
    ``stats`` untouched (everything is read and checked before anything is set)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
                raise ValueError(f"{path} is not an ocnna-fast scoring checkpoint")
            theirs = json.loads(meta["fingerprint"])
            if theirs != json.loads(json.dumps(fingerprint, sort_keys=True)):
                what = [k for k in fingerprint if theirs.get(k) != fingerprint[k]]
                raise ValueError(
                    f"checkpoint {path} was written by a different run (differs in: {', '.join(what)}); "
                    "delete it or score with the same model, layers and n_components"
                )
            batches, images = int(meta["batches"]), int(meta["images"])
            states: List[Dict[str, Any]] = []
            for i, st in enumerate(stats.values()):
                states.append(st.state_with(f.get_tensor(f"{i}.count"), f.get_tensor(f"{i}.mean"),
                                            f.get_tensor(f"{i}.m2"), int(f.get_tensor(f"{i}.images")[0])))
    except ValueError:
        raise
    except Exception as exc:  # safetensors' own errors for truncated or corrupted files
        raise ValueError(f"cannot read scoring checkpoint {path}: {exc}") from exc
    for st, s in zip(stats.values(), states):  # validate all, then set all
        probe = FilterStats(st.num_channels, st.n_components)
        probe.load_state_dict(s)
        if batches < 0 or s["images"] > images:
            raise ValueError(f"checkpoint {path} is inconsistent")
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
        raise ValueError("ranks score different layer sets; every rank must call score() with the same model and layers")
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
            part = g[offset:offset + 3 * c + 1]
            _C.merge(cnt.numpy(), mean.numpy(), m2.numpy(), part[:c].clone().numpy(),
                     part[c:2 * c].clone().numpy(), part[2 * c:3 * c].clone().numpy())
            images += int(part[3 * c])
        offset += 3 * c + 1
        st.load_state_dict(st.state_with(cnt, mean, m2, images))
