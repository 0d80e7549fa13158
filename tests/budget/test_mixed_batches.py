"""The one-pass search normalises the evaluated images by their own
statistics, and measures the loss curves on the first share of them, so
that share must hold what the whole set holds.  The
shipped JPEG CIFAR-10 lists one class after another, and so does a
class-balanced subset of it: the search mixes the images before taking the
first share the curves are measured on (``budget.segments.mixed``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ocnna_fast.budget.search as search_module
from ocnna_fast.budget.search import budget_groups, prune_to_budget
from ocnna_fast.budget.segments import mixed
from ocnna_fast.data.local import load_split, normalize, pretrained_weights
from ocnna_fast.models import build, load_weights
from ocnna_fast.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD


def test_mixed_batches_hold_the_same_images_in_the_same_sizes_and_every_class():
    labels = torch.arange(10).repeat_interleave(20)  # one class after another, as the shipped data lists them
    images = labels.float().view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
    batches = list(images.split(64))  # 64, 64, 64, 8
    out = mixed(batches)
    assert [int(b.shape[0]) for b in out] == [64, 64, 64, 8]
    assert sorted(torch.cat(out)[:, 0, 0, 0].tolist()) == sorted(labels.float().tolist())
    assert all(len(torch.unique(b[:, 0, 0, 0])) == 10 for b in out[:3])  # in order: 4 classes at most
    assert all(torch.equal(a, b) for a, b in zip(out, mixed(batches)))  # seeded
    assert mixed(batches[:1])[0] is batches[0]  # one batch: nothing to mix


@pytest.fixture(scope="module")
def sorted_cifar(data_dir):
    x, y = load_split("cifar10-jpeg", "train", data_dir, limit=256, seed=0, size=32)
    assert (np.diff(y.numpy()) >= 0).all()  # the data's own order: one class after another
    model = load_weights(build("resnet20"), pretrained_weights("resnet20", data_dir)).eval()
    return model, normalize(x, CIFAR_MEAN, CIFAR_STD), y


def test_the_curves_on_a_share_of_images_listed_by_class_see_every_class(sorted_cifar, monkeypatch):
    """The curves (the default) are measured on the first half of the
    evaluation images, each candidate normalised by their own statistics.
    In the data's order that half held 5 of the 10 classes: every curve
    measured what masking costs on airplanes to deer, normalised by their
    statistics alone (fails without the mixing)."""
    model, x, y = sorted_cifar
    label_of = {x[i].numpy().tobytes(): int(y[i]) for i in range(len(x))}
    seen = []

    class Recording(search_module.MaskedEvaluator):
        def __init__(self, model, outputs, calibration, evaluation, **kw):
            if kw.get("reference") is not None:  # the curves' evaluator: the first share of the images
                seen.extend(label_of[img.numpy().tobytes()] for batch in evaluation for img in batch)
            super().__init__(model, outputs, calibration, evaluation, **kw)

    monkeypatch.setattr(search_module, "MaskedEvaluator", Recording)
    _, _, _, found = budget_groups(model, x[:1], [], {n: None for n, _ in model.named_modules()})
    values = {info.root: np.random.default_rng(0).random(info.width) for _, info in found}
    batches = list(x.split(64))
    result = prune_to_budget(
        model,
        values,
        x[:1],
        "macs=0.5",
        allocation="sensitivity",
        evaluation=batches,
        calibration=batches,
        search="one-pass",
        curve_share=0.5,
        refine_steps=0,
        cap_search=False,
    )
    assert result.sensitivity["curve_images"] == len(seen) == 128
    assert sorted(set(seen)) == list(range(10))
    assert max(np.bincount(seen)) <= 2 * len(seen) / 10  # about as many of each as the whole set holds
