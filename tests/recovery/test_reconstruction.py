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
from helpers import FoldableNet, folded_pair, random_values
from torch import nn

from ocnna_fast.recovery.recover import recalibrate
from ocnna_fast.recovery.refit import RIDGE, reconstruct
from ocnna_fast.surgery.prune import prune


def _inputs(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    got = []
    h = model.get_submodule(layer).register_forward_pre_hook(lambda m, a: got.append(a[0].detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    return got[0]


def _pruned(k=50):
    _, folded, batches = folded_pair()
    example = torch.zeros(1, 3, 16, 16)
    pruned, plan = prune(folded, None, k, example, [], importance=random_values(folded, example))
    return folded, pruned, plan, batches


def test_a_dense_layer_is_the_ridge_regression_of_all_rows_at_once():
    """c2 (1x1, the first layer after the cut at c1) against an independent
    closed form: the stacked rows, ridge rows appended, solved by lstsq."""
    base, pruned, plan, batches = _pruned()
    batches = [batches[0][:32], batches[0][32:]]  # two batches: the sums must stream
    before = copy.deepcopy(pruned)
    info = reconstruct(pruned, base, plan, batches)
    assert info == {"reconstructed": 3, "rescaled": 1, "images": 64, "refit": "one pass"}  # c2, c3, fc; dw
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
    _, base, batches = folded_pair()
    same = copy.deepcopy(base)
    assert reconstruct(same, base, {}, batches)["reconstructed"] == 0
    for p, q in zip(same.parameters(), base.parameters()):
        assert torch.equal(p, q)
    _, pruned, plan, batches = _pruned(60)
    corrected = copy.deepcopy(pruned)
    recalibrate(corrected, base, plan, batches, folded="variance")  # the moment correction alone
    refitted = copy.deepcopy(pruned)
    info = recalibrate(refitted, base, plan, batches, folded="refit")
    assert info["method"] == "folded-refit" and info["reconstructed"] == 3 and info["corrected"] == 4
    assert info["refit"] == "one pass"
    per_layer = copy.deepcopy(pruned)  # the recovery passes the refit's way on: the same fit a pass per layer
    assert recalibrate(per_layer, base, plan, batches, folded="refit", one_pass=False)["refit"] == "a pass per layer"
    for (name, a), (_, b) in zip(refitted.state_dict().items(), per_layer.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    x = batches[0]  # on the calibration images the classifier's fit is least squares: closer logits
    with torch.no_grad():
        want = base(x)
        assert (refitted(x) - want).pow(2).mean() < 0.8 * (corrected(x) - want).pow(2).mean()


def test_the_job_runs_it_when_asked_and_refuses_unknown_corrections():
    from ocnna_fast.data.tensorimages import TensorImages
    from ocnna_fast.job.pipeline import JobData, JobSettings, PruneJob

    _, folded, batches = folded_pair()
    pixels = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = TensorImages(pixels, torch.zeros(64, dtype=torch.int64), (0.5,) * 3, (0.25,) * 3)
    data = JobData(evaluation=images, scoring=images, calibration=images)
    settings = JobSettings(criterion="l1", k=40, input_size=16, batch_size=32, folded="refit")
    job = PruneJob(folded, data, settings, ignored_layers=[], progress=False)
    job.rank()
    job.surgery()
    assert job.recalibrate()["method"] == "folded-refit"
    with pytest.raises(ValueError, match="folded must be one of mean, variance, refit"):
        JobSettings(folded="least-squares")
    with pytest.raises(ValueError, match="is now folded='refit'"):
        JobSettings(folded="regression")


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


class BNNet(nn.Module):
    """conv 3x3 -> BN -> conv 3x3 (no padding, no bias) -> BN -> ReLU -> mean -> linear."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 6, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn2(self.conv2(self.bn1(self.conv1(x))))).mean((2, 3)))


def _bn_pair():
    """A base whose BN1 channel 3 is exactly 2 x channel 0 - channel 1 (no
    constant), and its copy with channel 3 removed; BN statistics set as
    from training (random, fixed)."""
    torch.manual_seed(0)
    base = BNNet().eval()
    with torch.no_grad():
        for bn in (base.bn1, base.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
        # BN1's output c = a_c (z_c - m_c) + b_c with a_c = w_c / s_c: make o3 = 2 o0 - o1
        s = (base.bn1.running_var + base.bn1.eps).sqrt()
        a = base.bn1.weight / s
        base.conv1.weight[3] = 2 * a[0] / a[3] * base.conv1.weight[0] - a[1] / a[3] * base.conv1.weight[1]
        base.bn1.running_mean[3] = 0.0
        c = 2 * (base.bn1.bias[0] - a[0] * base.bn1.running_mean[0]) - (
            base.bn1.bias[1] - a[1] * base.bn1.running_mean[1]
        )
        base.bn1.bias[3] = c
    pruned = BNNet(3).eval()
    state = {k: v[:3] if k.startswith(("conv1", "bn1")) and v.dim() > 0 else v for k, v in base.state_dict().items()}
    state["conv2.weight"] = base.conv2.weight[:, :3].clone()
    pruned.load_state_dict(state)
    return base, pruned, {"kept_outputs": {"conv1": [0, 1, 2], "bn1": [0, 1, 2]}}


def test_a_batchnorm_network_is_recovered_exactly_in_its_re_estimated_frame():
    """BN1 re-estimated on the pruned network moves channels 0-2 (an affine
    change each); the removed channel 3 is a combination of 0 and 1; conv2
    has no padding and no bias.  With no ridge the refit gives the unpruned
    outputs back on new images, the intercept lands in BN2's running mean
    and the architecture keeps its parameters (16x16 images: 196 positions
    per image, so the im2col rows are a sample)."""
    from ocnna_fast.recovery.batchnorm import recalibrate_batchnorm

    base, pruned, plan = _bn_pair()
    x = [torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    keys = set(pruned.state_dict())
    recalibrate_batchnorm(pruned, x)
    before_mean = pruned.bn2.running_mean.clone()
    test = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert (pruned(test) - base(test)).abs().max() > 0.05
    info = reconstruct(pruned, base, plan, x, ridge=0.0)
    assert info == {"reconstructed": 2, "rescaled": 0, "images": 32, "refit": "one pass"}  # conv2 and fc
    assert set(pruned.state_dict()) == keys and pruned.conv2.bias is None
    assert not torch.equal(pruned.bn2.running_mean, before_mean)
    with torch.no_grad():
        torch.testing.assert_close(pruned(test), base(test), rtol=1e-4, atol=1e-4)


def test_a_kxk_conv_is_the_ridge_regression_of_its_im2col_rows_in_the_batchnorm_frame():
    """conv2 against an independent closed form on 10x10 images (64
    positions after the 3x3 kernel: every position taken): all im2col rows,
    the target the base BN2 output mapped through the pruned BN2, ridge rows
    appended, solved by lstsq; the intercept moves BN2's running mean."""
    from ocnna_fast.recovery.batchnorm import recalibrate_batchnorm

    base, pruned, plan = _bn_pair()
    with torch.no_grad():
        base.conv1.weight[3].normal_()  # channel 3 no longer recoverable: a real least-squares fit
    x = [torch.randn(8, 3, 10, 10, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    recalibrate_batchnorm(pruned, x)
    before = copy.deepcopy(pruned)
    reconstruct(pruned, base, plan, x)
    xs = torch.cat(x)
    cols = torch.nn.functional.unfold(_inputs(before, "conv2", xs), 3).transpose(1, 2).reshape(-1, 27).double()
    with torch.no_grad():
        y0 = base.bn2(base.conv2(_inputs(base, "conv2", xs))).permute(0, 2, 3, 1).reshape(-1, 6).double()
    bn = before.bn2
    z = (y0 - bn.bias.double()) / bn.weight.double() * (
        bn.running_var.double() + bn.eps
    ).sqrt() + bn.running_mean.double()
    a = torch.cat([cols, torch.ones(len(cols), 1, dtype=torch.float64)], 1)
    lam = RIDGE * (cols * cols).sum(0).mean()
    ridge_rows = torch.cat([torch.eye(27), torch.zeros(27, 1)], 1).double() * lam.sqrt()
    w = torch.linalg.lstsq(torch.cat([a, ridge_rows]), torch.cat([z, torch.zeros(27, 6)])).solution.T
    torch.testing.assert_close(pruned.conv2.weight.double().flatten(1), w[:, :-1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        pruned.bn2.running_mean.double(), bn.running_mean.double() - w[:, -1], rtol=1e-4, atol=1e-5
    )


def test_the_job_refits_a_batchnorm_model_only_when_asked():
    from ocnna_fast.data.tensorimages import TensorImages
    from ocnna_fast.job.pipeline import JobData, JobSettings, PruneJob

    pixels = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = TensorImages(pixels, torch.zeros(64, dtype=torch.int64), (0.5,) * 3, (0.25,) * 3)
    data = JobData(evaluation=images, scoring=images, calibration=images)
    got = {}
    for refit in (False, True):
        torch.manual_seed(1)
        base = BNNet(8).eval()
        settings = JobSettings(criterion="l1", k=40, input_size=16, batch_size=32, refit=refit)
        job = PruneJob(base, data, settings, ignored_layers=[base.fc], progress=False)
        job.rank()
        pruned, _ = job.surgery()
        got[refit] = job.recalibrate(), pruned
    assert got[False][0]["method"] == "batchnorm"
    info = got[True][0]
    assert info["method"] == "batchnorm+refit" and info["reconstructed"] == 2 and info["images"] == 64
    x = images.batch(torch.arange(64))[0]
    with torch.no_grad():  # on the calibration images the refit's outputs are closer to the base's
        want = base(x)
        assert (got[True][1](x) - want).pow(2).mean() < (got[False][1](x) - want).pow(2).mean()


def test_the_command_line_passes_refit():
    from ocnna_fast.cli import build_parser

    args = build_parser().parse_args(["prune", "--arch", "resnet20", "--refit"])
    assert args.refit is True
    assert build_parser().parse_args(["prune", "--arch", "resnet20"]).refit is False


def test_a_refit_that_could_not_happen_is_refused():
    from ocnna_fast.data.tensorimages import TensorImages
    from ocnna_fast.job.pipeline import JobData, JobSettings, PruneJob

    pixels = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = TensorImages(pixels, torch.zeros(8, dtype=torch.int64), (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(ValueError, match="calibration images"):
        PruneJob(
            BNNet(),
            JobData(evaluation=images, scoring=images, calibration=None),
            JobSettings(refit=True),
            progress=False,
        )
    data = JobData(evaluation=images, scoring=images, calibration=images)
    with pytest.raises(ValueError, match="folded='refit'"):
        PruneJob(FoldableNet(folded=True), data, JobSettings(refit=True, folded="variance"), progress=False)
    PruneJob(
        FoldableNet(folded=True), data, JobSettings(refit=True), progress=False
    )  # folded="refit", the default: the refit it asks for


def test_a_layer_without_bias_or_batchnorm_is_fitted_without_an_intercept_and_gets_no_bias():
    """A folded model whose linear layer has no bias: the refit must not add
    one (the saved state would no longer load into the architecture); it
    fits without an intercept, which here still recovers the outputs (the
    removed channel is 2 x channel 0 - channel 1 exactly, constant included)."""
    torch.manual_seed(0)
    base = Tokens(4).eval()
    base.fc = nn.Linear(4, 5, bias=False)
    with torch.no_grad():
        base.c.weight[3] = 2 * base.c.weight[0] - base.c.weight[1]
        base.c.bias[3] = 2 * base.c.bias[0] - base.c.bias[1]
    pruned = Tokens(3).eval()
    pruned.fc = nn.Linear(3, 5, bias=False)
    with torch.no_grad():
        pruned.c.weight.copy_(base.c.weight[:3])
        pruned.c.bias.copy_(base.c.bias[:3])
    keys = set(pruned.state_dict())
    x = [torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)]
    assert reconstruct(pruned, base, {"kept_outputs": {"c": [0, 1, 2]}}, x, ridge=0.0)["reconstructed"] == 1
    assert pruned.fc.bias is None and set(pruned.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(pruned(x[1]), base(x[1]), rtol=1e-4, atol=1e-4)


# ---- one pass in all, or a pass up to each layer: the same fit ---------------------------


class Residual(nn.Module):
    """conv-BN, two blocks with identity adds, a strided block with a 1x1 shortcut, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.b0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c1, self.b1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c3, self.b3 = nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(12)
        self.short = nn.Conv2d(8, 12, 1, stride=2, bias=False)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = torch.relu(self.b0(self.stem(x)))
        x = torch.relu(x + self.b1(self.c1(x)))
        x = torch.relu(x + self.b2(self.c2(x)))
        x = torch.relu(self.short(x) + self.b3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


class Untraceable(Residual):
    def forward(self, x):
        if float(x.mean()) > 1e9:  # control flow on a value: torch.fx cannot trace it
            return x
        return super().forward(x)


def _batchnorm_case(cls):
    from ocnna_fast.recovery.batchnorm import recalibrate_batchnorm

    torch.manual_seed(0)
    base = cls().eval()
    batches = [torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    recalibrate_batchnorm(base, batches)
    example = torch.zeros(1, 3, 12, 12)
    pruned, plan = prune(base, None, 40, example, [], importance=random_values(base, example))
    recalibrate_batchnorm(pruned, batches)
    return base, pruned, plan, batches


@pytest.mark.parametrize(
    "case, how",
    [
        (_pruned, "one pass"),  # MobileNet's pattern, folded
        (lambda: _batchnorm_case(Residual), "one pass"),  # adds and a strided shortcut, in BatchNorm frames
        (lambda: _batchnorm_case(Untraceable), "a pass per layer"),
    ],
)
def test_one_pass_refits_every_layer_as_a_pass_up_to_each_layer_does(case, how):
    """The one-pass refit keeps the values entering each layer between fits;
    every layer must be fitted from the very inputs (the pruned network's,
    after the layers before it were refitted) that a pass from the input gives."""
    base, pruned, plan, batches = case()
    per_layer, before = copy.deepcopy(pruned), copy.deepcopy(pruned.state_dict())
    info = reconstruct(pruned, base, plan, batches)
    assert info["refit"] == how and info["reconstructed"] > 1
    assert reconstruct(per_layer, base, plan, batches, one_pass=False)["refit"] == "a pass per layer"
    for (name, a), (_, b) in zip(pruned.state_dict().items(), per_layer.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(pruned.state_dict()[k], v) for k, v in before.items())  # the refit moved them


def test_one_pass_falls_back_where_the_kept_values_would_not_fit(monkeypatch):
    import ocnna_fast.recovery.layer_inputs as layer_inputs

    base, pruned, plan, batches = _batchnorm_case(Residual)
    monkeypatch.setattr(layer_inputs, "WALK_BYTES", 1000)
    assert reconstruct(pruned, base, plan, batches)["refit"] == "a pass per layer"
