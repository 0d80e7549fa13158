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

from .._util.distributed import all_reduce_sum, share_of
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
    distributed: Optional[bool] = None,
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
    ``distributed`` (default: under a process group of several; every
    process passes the same ``data``): each runs every world-th batch and
    the averages are combined, one process's statistics to rounding.
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
        _start(model, norms, home, run_device)
        seen = _stream(model, data, max_images, run_device, bar, share_of(distributed))
        if share_of(distributed)[1] > 1:
            _combine(norms)
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


def _stream(model: nn.Module, data: Iterable[Any], max_images: Optional[int], run_device, bar, share=(0, 1)) -> int:
    """Forward passes over ``data`` (BatchNorm in training mode accumulates),
    of the batches ``share = (rank, world)`` gives this process; the images
    seen by all."""
    seen = 0
    rank, world = share
    with torch.no_grad():
        for i, batch in enumerate(data):
            x = input_of(batch)
            if max_images is not None:
                x = x[: max_images - seen]
            if x.shape[0] == 0:
                break
            if i % world == rank:
                model(x.to(run_device, non_blocking=True))
            seen += int(x.shape[0])
            if bar is not None:
                bar.update(int(x.shape[0]))
            if max_images is not None and seen >= max_images:
                break
    if seen == 0:
        raise ValueError("data yielded no images to estimate statistics from")
    return seen


def _start(model: nn.Module, norms, home, run_device) -> None:
    """The model on the device it runs on, in eval mode but for its BatchNorms, whose statistics restart."""
    if run_device != home:
        model.to(run_device)
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # an exact average over the batches, not an exponential one
        m.train()


def _combine(norms: List[nn.Module]) -> None:
    """Each process's averages over its batches, made the average over all
    batches: sums weighted by the batches each process ran, added across
    processes (a process that ran none adds nothing)."""
    for m in norms:
        n = m.num_batches_tracked.to(m.running_mean.dtype)
        packed = torch.cat([m.running_mean * n, m.running_var * n, n.reshape(1)])
        total = all_reduce_sum(packed)
        c = m.running_mean.numel()
        count = total[-1]
        m.running_mean.copy_(total[:c] / count)
        m.running_var.copy_(total[c : 2 * c] / count)
        m.num_batches_tracked.copy_(count.to(m.num_batches_tracked.dtype))


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
