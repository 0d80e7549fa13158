"""What follows surgery, for every model: BatchNorm re-estimation when the
pruned model has BatchNorm (and with ``refit`` the least-squares refit), the
folded correction when its BatchNorm is folded into its convs (bias
compensation, then the kept channels' spread, then the refit), named as the
flags name it (``RECOVERIES``)."""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping

from torch import nn

from .._util.placement import input_of
from .batchnorm import recalibrate_batchnorm
from .compensation import compensate
from .foldedbn import correct_folded
from .refit import reconstruct

__all__ = ["FOLDED", "RECOVERIES", "check_folded", "has_batchnorm", "recalibrate"]

# what a folded-BatchNorm model gets after surgery, from least to most work
# what a folded-BatchNorm model gets after surgery: the removed channels' means
# compensated; then each kept channel's spread too; then the layers refitted
FOLDED = ("mean", "variance", "refit")

# the recovery a report names: "batchnorm" or "batchnorm+refit" for a model
# with BatchNorm (--refit), "folded-" + the --folded-correction for one without
RECOVERIES = ("batchnorm", "batchnorm+refit") + tuple(f"folded-{f}" for f in FOLDED)


def check_folded(folded: str) -> None:
    if folded == "regression":
        raise ValueError("folded='regression' is now folded='refit' (--folded-correction refit)")
    if folded not in FOLDED:
        raise ValueError(f"folded must be one of {', '.join(FOLDED)}; got {folded!r}")


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def recalibrate(
    pruned: nn.Module,
    base: nn.Module,
    plan: Mapping,
    batches: Iterable,
    progress: bool = False,
    folded: str = "refit",
    refit: bool = False,
    one_pass: bool = True,
) -> Dict[str, Any]:
    """What follows surgery before evaluation: BatchNorm re-estimation when the
    pruned model has BatchNorm, and with ``refit`` every layer downstream of a
    cut refitted after it by least squares to the base model's outputs
    (``refit.reconstruct``).  A folded-BatchNorm model gets bias
    compensation of the removed channels' means and then, with
    ``folded="variance"``, every conv's output mean and spread re-estimated
    as its BatchNorm would be (``foldedbn.correct_folded``); with
    ``"refit"`` (default) after that every layer downstream of a cut
    refitted by least squares to the base model's outputs
    (``refit.reconstruct``); ``"mean"``: compensation alone.  ``batches``: the calibration
    batches (read once with BatchNorm; a folded model reads them several
    times, so an iterator is held in memory).  Returns ``{"method": one of
    RECOVERIES, "images": n, ...}``.  ``one_pass``: as ``reconstruct``'s (False
    runs the refit a pass per layer, to compare the two)."""
    check_folded(folded)
    bn = has_batchnorm(pruned)
    if (refit or not bn) and iter(batches) is batches:  # read twice: keep a one-pass iterator's batches
        batches = list(batches)
    if bn:
        images = recalibrate_batchnorm(pruned, batches, progress=progress)
        if not refit:
            return {"method": "batchnorm", "images": images}
        refitted = reconstruct(pruned, base, plan, batches, progress=progress, one_pass=one_pass)
        return {"method": "batchnorm+refit", **refitted, "images": images}
    counted = []

    def counting():
        for b in batches:
            counted.append(int(input_of(b).shape[0]))
            yield b

    info = compensate(pruned, base, plan, counting())
    if folded == "mean":
        return {"method": "folded-mean", "images": sum(counted), **info}
    corrected = correct_folded(pruned, base, plan, batches, progress=progress)
    if folded == "variance":
        return {"method": "folded-variance", **info, **corrected}
    refitted = reconstruct(pruned, base, plan, batches, progress=progress, one_pass=one_pass)
    return {"method": "folded-refit", **info, **corrected, **refitted}
