"""Re-estimating BatchNorm statistics after surgery.

Removing channels upstream changes what every BatchNorm layer sees, so the
running mean and variance it carries no longer fit: a freshly pruned ResNet-56
(k=40) evaluates near chance.  One no-grad pass over a few hundred training
images with the BatchNorm layers in training mode, and their momentum set to
``None`` (an exact average over the batches instead of an exponential one),
gives them statistics of the pruned network; nothing is trained.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Optional, Union

import torch
from torch import nn

from .._util.placement import input_of, placement
from .._util.validate import positive_int
from ..errors import add_note

__all__ = ["recalibrate_batchnorm"]


def recalibrate_batchnorm(
    model: nn.Module,
    data: Iterable[Any],
    *,
    max_images: Optional[int] = None,
    device: Union[None, str, torch.device] = None,
    progress: bool = False,
) -> int:
    """Replaces the running statistics of every BatchNorm layer of ``model``
    with averages over ``data``; returns the number of images used.

    Args:
        model: the network (typically just pruned).  Only BatchNorm layers
            change; everything else (dropout included) runs in eval mode.
        data: an iterable of input batches or ``(input, target, ...)``
            tuples, e.g. a few hundred training images without augmentation.
        max_images: stop after this many images (the last batch is cut).
        device: where to run (default: the model's device); the model is
            moved back afterwards.
        progress: show a progress bar.

    The running mean and variance become the averages of the batch means and
    variances (PyTorch's cumulative average, ``momentum=None``).  Training
    flags and momenta are restored, and on any error the old statistics.
    """
    if max_images is not None:
        max_images = positive_int(max_images, "max_images")
    norms = _norms(model)
    home, run_device = placement(model, device)
    flags = {m: m.training for m in model.modules()}
    saved = [
        (m.momentum, {k: v.clone() for k, v in m.state_dict().items() if k.startswith(_STATISTICS)}) for m in norms
    ]
    seen = 0
    failure: Optional[BaseException] = None
    bar = _bar(max_images) if progress else None
    try:
        if run_device != home:
            model.to(run_device)
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        seen = _stream(model, data, max_images, run_device, bar)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        try:
            _restore(model, norms, saved, flags, (home, run_device), keep_statistics=failure is None)
        except BaseException as restore_error:
            if failure is None:
                raise
            # the first error is the cause: it propagates, the restore error is attached to it
            add_note(failure, f"and restoring the model afterwards failed too: {restore_error!r}")
        finally:
            if bar is not None:
                bar.close()
    return seen


_STATISTICS = ("running_", "num_")


def _bar(max_images: Optional[int]):
    from tqdm.auto import tqdm

    return tqdm(total=max_images, unit="img", desc="BatchNorm statistics")


def _norms(model: nn.Module) -> List[nn.Module]:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer to recalibrate")
    if any(not m.track_running_stats for m in norms):
        raise ValueError("a BatchNorm layer has track_running_stats=False: it keeps no statistics to re-estimate")
    return norms


def _stream(model: nn.Module, data: Iterable[Any], max_images: Optional[int], run_device, bar) -> int:
    """Forward passes over ``data`` (BatchNorm in training mode accumulates); the images seen."""
    seen = 0
    with torch.no_grad():
        for batch in data:
            x = input_of(batch)
            if max_images is not None:
                x = x[: max_images - seen]
            if x.shape[0] == 0:
                break
            model(x.to(run_device, non_blocking=True))
            seen += int(x.shape[0])
            if bar is not None:
                bar.update(int(x.shape[0]))
            if max_images is not None and seen >= max_images:
                break
    if seen == 0:
        raise ValueError("data yielded no images to estimate statistics from")
    return seen


def _restore(model: nn.Module, norms, saved, flags, devices, keep_statistics: bool) -> None:
    """Momenta, training flags and device as found; the old statistics too unless the run succeeded."""
    home, run_device = devices
    for m, (momentum, state) in zip(norms, saved):
        m.momentum = momentum
        if not keep_statistics:
            for k, v in state.items():
                getattr(m, k).copy_(v)
    for m, was in flags.items():
        m.train(was)
    if run_device != home:
        model.to(home)
