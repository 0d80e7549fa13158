"""The prune job as steps (``pipeline.PruneJob``): the same model as the
functions it calls, resumable long steps, a suite's cached ranking."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from ocnna_fast import prune, recalibrate_batchnorm, score
from ocnna_fast.data.evaluation import evaluate
from ocnna_fast.job.pipeline import JobData, JobSettings, PruneJob
from ocnna_fast.recovery.distill import TensorImages, distill


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 12, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(12)
        self.b = nn.Conv2d(12, 10, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(10)
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        h = torch.relu(self.bn_a(self.a(x)))
        return self.fc(torch.relu(self.bn_b(self.b(h))).mean((2, 3)))


def _set(n, seed, augment=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    return TensorImages(x, torch.arange(n) % 3, (0.5,) * 3, (0.25,) * 3, augment=augment)


def _model():
    torch.manual_seed(0)
    m = Net()
    with torch.no_grad():  # statistics that are not the defaults, so re-estimating them matters
        for bn in (m.bn_a, m.bn_b):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


DATA = JobData(evaluation=_set(24, 0), scoring=_set(16, 1), calibration=_set(16, 2), training=_set(16, 3, augment=True))
SETTINGS = JobSettings(k=40, criterion="ocnna", epochs=2, lr=0.05, batch_size=8, seed=3, input_size=8)


def test_the_job_builds_what_its_functions_build(tmp_path):
    model = _model()
    result = PruneJob(model, DATA, SETTINGS, progress=False).run()
    # the same steps by hand
    x = torch.zeros(1, 3, 8, 8)
    scores = score(model, (b for b, _ in DATA.scoring.batches(8)), progress=False)
    pruned, plan = prune(model, scores, 40, x, criterion="ocnna")
    assert plan["groups"] == result.plan["groups"]
    recalibrate_batchnorm(pruned, (b for b, _ in DATA.calibration.batches(8)))
    distill(pruned, model, DATA.training, epochs=2, lr=0.05, batch_size=8, seed=3, progress=False)
    for k, v in pruned.state_dict().items():
        assert torch.equal(v, result.pruned.state_dict()[k]), k
    assert result.accuracy["distilled"] == evaluate(pruned, DATA.evaluation)
    assert result.accuracy["base"] == evaluate(model, DATA.evaluation)
    assert list(result.accuracy) == ["base", "surgery", "recalibrated", "distilled"]
    assert result.params < result.baseline.params and 0 < result.rpr < 1
    report = result.report()
    assert report["pruned_accuracy"] == result.accuracy["distilled"]
    assert report["pruned_accuracy_before_finetune"] == result.accuracy["recalibrated"]
    assert report["finetune_epochs"] == 2 and len(report["distill_history"]) == 2


def test_a_stopped_job_resumes_its_distillation(tmp_path, monkeypatch):
    full = PruneJob(_model(), DATA, SETTINGS, progress=False).run()
    distill_mod = sys.modules["ocnna_fast.recovery.distill"]
    real = distill_mod.distill

    def stop_after_one(*a, **kw):
        real(*a, **{**kw, "stop_after_epoch": 1})
        raise KeyboardInterrupt

    pipeline = sys.modules["ocnna_fast.job.pipeline"]
    monkeypatch.setattr(pipeline, "distill", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        PruneJob(_model(), DATA, SETTINGS, checkpoint_dir=tmp_path, progress=False).run()
    monkeypatch.setattr(pipeline, "distill", real)
    resumed = PruneJob(_model(), DATA, SETTINGS, checkpoint_dir=tmp_path, progress=False).run()
    assert len(resumed.history) == 2
    for k, v in full.pruned.state_dict().items():
        assert torch.equal(v, resumed.pruned.state_dict()[k]), k


def test_a_suite_ranks_once_and_reuses_the_values():
    model = _model()
    settings = JobSettings(k=40, criterion="l1", batch_size=8, input_size=8)
    first = PruneJob(model, DATA, settings, progress=False)
    values = first.rank()
    first.surgery()
    again = PruneJob(model, DATA, JobSettings(k=60, criterion="l1", batch_size=8, input_size=8), progress=False)
    again.rank(values)
    again.surgery()
    assert "rank" not in again.seconds  # nothing was computed twice
    w40 = [g["channels"] - len(g["removed"]) for g in first.plan["groups"]]
    w60 = [g["channels"] - len(g["removed"]) for g in again.plan["groups"]]
    assert all(a >= b for a, b in zip(w40, w60)) and w40 != w60


def test_steps_out_of_order_and_bad_settings_are_refused():
    model = _model()
    with pytest.raises(ValueError, match="unknown criterion"):
        PruneJob(model, DATA, JobSettings(criterion="nope"))
    with pytest.raises(ValueError, match="percentile"):
        PruneJob(model, DATA, JobSettings(k=100))
    job = PruneJob(model, DATA, SETTINGS, progress=False)
    with pytest.raises(ValueError, match="surgery"):
        job.recalibrate()
    with pytest.raises(ValueError, match="not scored by OCNNA"):
        PruneJob(model, DATA, JobSettings(criterion="l1"), progress=False).score()
    with pytest.raises(ValueError, match="training images"):
        job2 = PruneJob(model, JobData(evaluation=DATA.evaluation, scoring=DATA.scoring), SETTINGS, progress=False)
        job2.score()
        job2.surgery()
        job2.distill()


def _loader(images: TensorImages, batch_size: int):
    """The same images as a DataLoader would give them: normalised, in order."""
    x, y = images.batch(torch.arange(len(images)))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


@pytest.mark.parametrize("loader_batch", [5, 8, 24])
def test_a_job_reads_dataloaders_as_it_reads_image_sets(loader_batch):
    """DataLoaders for evaluation, scoring and calibration (any batch size of
    their own): the same plan, weights and accuracies as the image sets."""
    settings = JobSettings(k=40, criterion="ocnna-rms", epochs=1, lr=0.05, batch_size=8, seed=3)
    want = PruneJob(_model(), DATA, settings, progress=False).run()
    loaders = JobData(
        evaluation=_loader(DATA.evaluation, loader_batch),
        scoring=_loader(DATA.scoring, loader_batch),
        calibration=_loader(DATA.calibration, loader_batch),
        training=DATA.training,
    )
    got = PruneJob(_model(), loaders, settings, progress=False).run()
    assert got.plan["groups"] == want.plan["groups"]
    assert got.accuracy == pytest.approx(want.accuracy)
    for k, v in want.pruned.state_dict().items():
        torch.testing.assert_close(got.pruned.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_what_a_dataloader_cannot_serve_is_refused():
    from ocnna_fast.data.loader import LoaderImages

    loader = _loader(DATA.scoring, 4)
    with pytest.raises(TypeError, match="distillation draws its own seeded order"):
        JobData(evaluation=DATA.evaluation, training=loader)
    with pytest.raises(TypeError, match="can be read once"):
        JobData(evaluation=(b for b in loader))
    with pytest.raises(TypeError, match="need their labels"):
        list(JobData(evaluation=[x for x, _ in loader]).evaluation.batches(8))
    with pytest.raises(TypeError, match="takes TensorImages, FolderImages or a DataLoader"):
        JobData(evaluation=torch.zeros(4, 3, 8, 8))
    # scoring and calibration need no labels: bare image batches are read, 16 images as 8 + 8
    bare = LoaderImages([x for x, _ in loader])
    assert len(bare) == 16 and [b[0].shape[0] for b in bare.batches(8)] == [8, 8]
    assert [b[0].shape[0] for b in bare.batches(8, shard=(1, 2))] == [4, 4]


def test_a_loader_batch_larger_than_the_jobs_is_served_in_views():
    """One 600-image batch read at 50: each cut copied what remained (the
    images copied grew with the square of the loader's batch)."""
    from ocnna_fast.data.loader import LoaderImages

    x, y = torch.randn(600, 3, 4, 4), torch.arange(600)
    batches = list(LoaderImages([(x, y)]).batches(50))
    assert len(batches) == 12 and all(torch.equal(b, x[i * 50 : (i + 1) * 50]) for i, (b, _) in enumerate(batches))
    assert all(torch.equal(t, y[i * 50 : (i + 1) * 50]) for i, (_, t) in enumerate(batches))
    assert all(b.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for b, _ in batches)
    # batches that straddle two loader batches are joined (a copy, once)
    two = list(LoaderImages([(x[:30], y[:30]), (x[30:70], y[30:70])]).batches(50))
    assert [b.shape[0] for b, _ in two] == [50, 20] and torch.equal(two[0][0], x[:50])
