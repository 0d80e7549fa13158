"""Least-squares reconstruction of folded-BatchNorm networks
(``reconstruction.reconstruct``): each refitted layer equals the closed-form
ridge regression computed from all the calibration rows at once, depthwise
convs get the per-channel line of best fit, nothing before the first cut
moves, and the job runs it when asked."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning")

from test_foldedbn import Net, _pair, _values  # noqa: E402

from ocnna_fast.compensation import recalibrate  # noqa: E402
from ocnna_fast.pruning import prune  # noqa: E402
from ocnna_fast.reconstruction import RIDGE, reconstruct  # noqa: E402


def _inputs(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    got = []
    h = model.get_submodule(layer).register_forward_pre_hook(lambda m, a: got.append(a[0].detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    return got[0]


def _pruned(k=50):
    _, folded, batches = _pair()
    example = torch.zeros(1, 3, 16, 16)
    pruned, plan = prune(folded, None, k, example, [], importance=_values(folded, example))
    return folded, pruned, plan, batches


def test_a_dense_layer_is_the_ridge_regression_of_all_rows_at_once():
    """c2 (1x1, the first layer after the cut at c1) against an independent
    closed form: the stacked rows, ridge rows appended, solved by lstsq."""
    base, pruned, plan, batches = _pruned()
    batches = [batches[0][:32], batches[0][32:]]  # two batches: the sums must stream
    before = copy.deepcopy(pruned)
    info = reconstruct(pruned, base, plan, batches)
    assert info == {"reconstructed": 3, "rescaled": 1, "images": 64}  # c2, c3, fc; dw
    x = torch.cat(batches)
    x_new = _inputs(before, "c2", x).permute(0, 2, 3, 1).reshape(-1, pruned.c2.in_channels).double()
    with torch.no_grad():
        y = base.c2(_inputs(base, "c2", x)).permute(0, 2, 3, 1).reshape(-1, 24).double()
    kept = torch.as_tensor(plan["kept_outputs"]["c2"])
    a = torch.cat([x_new, torch.ones(len(x_new), 1, dtype=torch.float64)], 1)
    lam = RIDGE * (x_new * x_new).sum(0).mean()
    ridge_rows = torch.cat([torch.eye(x_new.shape[1]), torch.zeros(x_new.shape[1], 1)], 1).double() * lam.sqrt()
    sol = torch.linalg.lstsq(
        torch.cat([a, ridge_rows]), torch.cat([y[:, kept], torch.zeros(len(ridge_rows), len(kept))])
    )
    w = sol.solution.T
    torch.testing.assert_close(pruned.c2.weight.double().flatten(1), w[:, :-1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pruned.c2.bias.double(), w[:, -1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(pruned.c2.weight, before.c2.weight)  # it did change the layer
    torch.testing.assert_close(pruned.c1.weight, before.c1.weight, rtol=0, atol=0)  # before the cut: untouched


def test_a_depthwise_conv_gets_each_channels_line_of_best_fit():
    base, pruned, plan, batches = _pruned()
    probe = copy.deepcopy(pruned)
    reconstruct(probe, base, plan, batches)
    # the depthwise fit sees c2 already refitted: rebuild that state, then fit dw by hand
    x = batches[0]
    refit_c2 = copy.deepcopy(pruned)
    refit_c2.c2.load_state_dict(probe.c2.state_dict())
    with torch.no_grad():
        y_new = refit_c2.dw(_inputs(refit_c2, "dw", x))
        y_old = base.dw(_inputs(base, "dw", x))[:, torch.as_tensor(plan["kept_outputs"]["c2"])]
        got = probe.dw(_inputs(refit_c2, "dw", x))
    for c in range(y_new.shape[1]):
        slope, icept = np.polyfit(y_new[:, c].flatten().double().numpy(), y_old[:, c].flatten().double().numpy(), 1)
        want = slope * y_new[:, c].double() + icept
        torch.testing.assert_close(got[:, c].double(), want, rtol=1e-3, atol=1e-4)


def test_nothing_cut_nothing_moved_and_the_fit_brings_outputs_closer():
    _, base, batches = _pair()
    same = copy.deepcopy(base)
    assert reconstruct(same, base, {}, batches)["reconstructed"] == 0
    for p, q in zip(same.parameters(), base.parameters()):
        assert torch.equal(p, q)
    _, pruned, plan, batches = _pruned(60)
    corrected = copy.deepcopy(pruned)
    recalibrate(corrected, base, plan, batches, folded="variance")  # the moment correction alone
    refitted = copy.deepcopy(pruned)
    info = recalibrate(refitted, base, plan, batches, folded="regression")
    assert info["method"] == "folded-regression" and info["reconstructed"] == 3 and info["corrected"] == 4
    x = batches[0]  # on the calibration images the classifier's fit is least squares: closer logits
    with torch.no_grad():
        want = base(x)
        assert (refitted(x) - want).pow(2).mean() < 0.8 * (corrected(x) - want).pow(2).mean()


def test_the_job_runs_it_when_asked_and_refuses_unknown_corrections():
    from ocnna_fast.pipeline import JobData, JobSettings, PruneJob
    from ocnna_fast.tensorimages import TensorImages

    _, folded, batches = _pair()
    pixels = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = TensorImages(pixels, torch.zeros(64, dtype=torch.int64), (0.5,) * 3, (0.25,) * 3)
    data = JobData(eval=images, score=images, bn=images)
    settings = JobSettings(criterion="l1", k=40, input_size=16, batch_size=32, folded="regression")
    job = PruneJob(folded, data, settings, ignored_layers=[], progress=False)
    job.rank()
    job.surgery()
    assert job.recalibrate()["method"] == "folded-regression"
    with pytest.raises(ValueError, match="regression"):
        PruneJob(Net(folded=True), data, JobSettings(folded="least-squares"), progress=False)


def test_the_command_line_takes_it_where_it_applies(capsys):
    from ocnna_fast import cli

    with pytest.raises(SystemExit):
        cli.main(["prune", "--folded-correction", "least-squares"])
    assert "invalid choice" in capsys.readouterr().err


class Tokens(nn.Module):
    """A 1x1 conv whose positions a linear layer reads as tokens (N, HW, C)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, width, 1)
        self.fc = nn.Linear(width, 5)

    def forward(self, x):
        return self.fc(self.c(x).flatten(2).transpose(1, 2)).mean(1)


def test_a_removed_channel_that_kept_ones_combine_is_recovered_exactly():
    """Channel 3 of the conv is 2 x channel 0 - channel 1 (+ a constant): with
    no ridge the refit linear layer gives the unpruned outputs back, tokens
    (N, L, C) included."""
    torch.manual_seed(0)
    base = Tokens(4).eval()
    with torch.no_grad():
        base.c.weight[3] = 2 * base.c.weight[0] - base.c.weight[1]
        base.c.bias[3] = 2 * base.c.bias[0] - base.c.bias[1] + 0.5
    pruned = Tokens(3).eval()
    with torch.no_grad():
        pruned.c.weight.copy_(base.c.weight[:3])
        pruned.c.bias.copy_(base.c.bias[:3])
    x = [torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)]
    with torch.no_grad():
        assert (pruned(x[0]) - base(x[0])).abs().max() > 0.05
    info = reconstruct(pruned, base, {"kept_outputs": {"c": [0, 1, 2]}}, x, ridge=0.0)
    assert info["reconstructed"] == 1
    with torch.no_grad():
        torch.testing.assert_close(pruned(x[1]), base(x[1]), rtol=1e-4, atol=1e-4)
