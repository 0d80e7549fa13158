"""Top-1 accuracy of a model on a data set (``TensorImages`` or
``FolderImages``): what every stage of a prune job is measured by."""

from __future__ import annotations

import math
from typing import Any, Union

import torch
from torch import nn

from .._util import validate
from .._util.module_state import restore_training_flags, training_flags

__all__ = ["evaluate"]


def evaluate(
    model: nn.Module,
    data: Any,
    batch_size: int = 256,
    device: Union[str, torch.device] = "cpu",
    progress: bool = False,
) -> float:
    """Top-1 accuracy in percent; every module's training flag is restored.
    Empty data is an error (an accuracy of no images means nothing)."""
    batch_size = validate.positive_int(batch_size, "batch_size")
    if len(data) == 0:
        raise ValueError("no images to evaluate on")
    was = training_flags(model)
    model.eval()
    correct = 0
    it = data.batches(batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=math.ceil(len(data) / batch_size), desc="evaluate", unit="batch")
    try:
        with torch.no_grad():
            for x, y in it:
                correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    finally:
        restore_training_flags(was)
    return 100.0 * correct / len(data)
