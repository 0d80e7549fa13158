"""Top-1 accuracy of a model on a data set (``TensorImages`` or
``FolderImages``): what every stage of a prune job is measured by."""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
from torch import nn

from .._util import validate
from .._util.distributed import all_reduce_sum, share_of
from .._util.module_state import restore_training_flags, training_flags
from .._util.placement import placement, to_device
from .._util.precision import autocast, resolve_precision

__all__ = ["evaluate"]


def evaluate(
    model: nn.Module,
    data: Any,
    batch_size: int = 256,
    device: Optional[Union[str, torch.device]] = None,
    progress: bool = False,
    precision: Optional[str] = "fp32",
    distributed: Optional[bool] = None,
) -> float:
    """Top-1 accuracy in percent, run on ``device`` (default: where the
    model is; the model is moved back after) in ``precision`` (``fp32``;
    ``amp``: autocast; ``None``/``auto``: amp on a GPU); every module's
    training flag is restored.  Empty data is an error (an accuracy of no images means
    nothing).  ``distributed`` (default: under a process group of several,
    as ``torchrun`` starts): each process evaluates its share of every batch
    and the hits are summed across them, so every process returns the
    accuracy of all the images (evaluation mode: an image's prediction does
    not depend on its batch, so the figure is one process's)."""
    batch_size = validate.positive_int(batch_size, "batch_size")
    if len(data) == 0:
        raise ValueError("no images to evaluate on")
    home, run = placement(model, device)
    was = training_flags(model)
    model.eval()
    rank, world = share_of(distributed)
    shard = (rank, world) if world > 1 else None
    it = data.batches(batch_size, shard=shard) if shard else data.batches(batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=math.ceil(len(data) / batch_size), desc="evaluate", unit="batch")
    try:
        model.to(run)
        hits = torch.zeros((), dtype=torch.long, device=run)
        precision = resolve_precision(precision, run)
        with torch.no_grad(), autocast(precision, run):
            for x, y in it:
                hits += (model(to_device(x, run)).argmax(1) == to_device(y, run)).sum()
        if shard:
            hits = all_reduce_sum(hits)
        correct = int(hits)  # one synchronisation, after the last batch
    finally:
        model.to(home)
        restore_training_flags(was)
    return 100.0 * correct / len(data)
