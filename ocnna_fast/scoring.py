"""``score()``: one pass over the data scores every prunable conv at once.

Forward hooks hand each conv's output to that layer's ``FilterStats``; the
model runs in ``eval()`` under ``no_grad()`` and is left exactly as found
(training flag, device, no hooks), also when something fails.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from . import _native
from .layers import prunable_convs
from .scores import Scores
from .stats import FilterStats

__all__ = ["score"]


def _input_of(batch: Any) -> torch.Tensor:
    """The model input of one item of ``data``: a tensor, or the first element of a tuple/list."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise TypeError("data yielded an empty tuple/list; expected (input, target, ...)")
        batch = batch[0]
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    if not isinstance(batch, torch.Tensor):
        raise TypeError(
            "data must yield input tensors or (input, target, ...) tuples, "
            f"got {type(batch).__name__}"
        )
    if batch.dim() == 0:
        raise ValueError("data yielded a 0-d tensor; expected a batch of inputs")
    return batch


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _total_images(data: Any, max_images: Optional[int]) -> Optional[int]:
    total = None
    dataset = getattr(data, "dataset", None)
    try:
        total = len(dataset) if dataset is not None else None
    except TypeError:
        total = None
    if max_images is not None:
        total = max_images if total is None else min(total, max_images)
    return total


def score(
    model: nn.Module,
    data: Iterable[Any],
    *,
    n_components: Union[None, int, float] = None,
    layers: Optional[Sequence[str]] = None,
    max_images: Optional[int] = None,
    device: Union[None, str, torch.device] = None,
    progress: bool = True,
) -> Scores:
    """OCNNA scores of every prunable conv of ``model`` over ``data``.

    Args:
        model: the trained CNN (left unchanged).
        data: an iterable of input batches, or of ``(input, target, ...)``
            tuples; a ``DataLoader`` works.
        n_components: PCA components kept per map: ``None`` (all; default),
            an int, or a float explained-variance ratio in (0, 1).
        layers: qualified names of the convs to score (default: all with
            ``groups == 1``).
        max_images: stop after this many images (the last batch is cut).
        device: where to run; default the model's device.  The model is moved
            there for the run and moved back afterwards.
        progress: show a progress bar.

    Returns:
        ``Scores``, mapping each conv name to its ``LayerScores``.
    """
    ncomp = _native.canonical_n_components(n_components)
    if max_images is not None:
        if isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer)) or max_images < 1:
            raise ValueError(f"max_images must be a positive int or None, got {max_images!r}")
        max_images = int(max_images)
    convs = prunable_convs(model, layers)
    if not convs:
        raise ValueError(
            f"{type(model).__name__} has no prunable conv (nn.Conv2d with groups == 1) to score"
        )

    home = _model_device(model)
    run_device = torch.device(device) if device is not None else home
    if run_device.type == "cuda" and run_device.index is None:
        run_device = torch.device("cuda", torch.cuda.current_device())
    stats: Dict[str, FilterStats] = {
        name: FilterStats(m.out_channels, ncomp, name=name) for name, m in convs.items()
    }

    def make_hook(st: FilterStats):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            st.update(output)

        return hook

    was_training = model.training
    handles = []
    seen = 0
    bar = None
    try:
        if run_device != home:
            model.to(run_device)
        handles = [m.register_forward_hook(make_hook(stats[n])) for n, m in convs.items()]
        model.eval()
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=_total_images(data, max_images), unit="img", desc="OCNNA scoring")
        with torch.no_grad():
            for batch in data:
                x = _input_of(batch)
                if max_images is not None and seen + x.shape[0] > max_images:
                    x = x[: max_images - seen]
                if x.shape[0] == 0:
                    continue
                x = x.to(run_device, non_blocking=True)
                before = {n: s.images for n, s in stats.items()}
                model(x)
                n = int(x.shape[0])
                for name, st in stats.items():
                    grew = st.images - before[name]
                    if grew not in (0, n):
                        raise ValueError(
                            f"layer {name!r} ran {grew // n} times in one forward pass "
                            "(a shared module); its scores would mix several positions"
                        )
                seen += n
                if bar is not None:
                    bar.update(n)
                if max_images is not None and seen >= max_images:
                    break
        if seen == 0:
            raise ValueError("data yielded no images")
        results = {}
        for name, st in stats.items():
            if st.images == 0:
                if layers is not None:
                    raise ValueError(f"layer {name!r} never ran in the forward pass")
                warnings.warn(f"conv {name!r} never ran in the forward pass; it is left out of the scores")
                continue
            results[name] = st.result()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        if run_device != home:
            model.to(home)
        if bar is not None:
            bar.close()
    return Scores(results, n_components=ncomp)
