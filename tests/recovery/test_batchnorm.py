"""BatchNorm re-estimation after surgery: exact averages, model left as found,
and it brings a freshly pruned network back from near chance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ocnna_fast import recalibrate_batchnorm


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.c(x))).mean((2, 3))))


def batches(n=4, b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 6, 6, generator=g) * 3 + 1 for _ in range(n)]


def test_statistics_are_exact_averages_over_the_batches():
    net = Net().eval()
    data = batches()
    with torch.no_grad():
        feats = [net.c(x) for x in data]
    assert recalibrate_batchnorm(net, data) == 32
    means = torch.stack([f.mean((0, 2, 3)) for f in feats])
    variances = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats])
    torch.testing.assert_close(net.bn.running_mean, means.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net.bn.running_var, variances.mean(0), rtol=1e-5, atol=1e-6)
    # equal-sized batches: the mean is the mean over every image
    torch.testing.assert_close(net.bn.running_mean, torch.cat(feats).mean((0, 2, 3)), rtol=1e-5, atol=1e-6)


def test_model_is_left_as_found_and_only_batchnorm_trains():
    net = Net().train()
    net.drop.eval()  # mixed flags must come back as they were
    seen_flags = []
    net.drop.register_forward_hook(lambda m, i, o: seen_flags.append((m.training, net.bn.training)))
    momentum = net.bn.momentum
    recalibrate_batchnorm(net, [(x, 0) for x in batches(2)], max_images=12)
    assert seen_flags == [(False, True), (False, True)]  # dropout stayed off, BN collected
    assert net.training and not net.drop.training and net.bn.training and net.c.training
    assert net.bn.momentum == momentum
    assert int(net.bn.num_batches_tracked) == 2


def test_errors_leave_the_old_statistics():
    net = Net().eval()
    recalibrate_batchnorm(net, batches())
    before = {k: v.clone() for k, v in net.bn.state_dict().items()}
    bad = batches(2)
    bad.append(torch.randn(8, 5, 6, 6))  # wrong channel count: the forward fails
    with pytest.raises(RuntimeError):
        recalibrate_batchnorm(net, bad)
    with pytest.raises(ValueError, match="no images"):
        recalibrate_batchnorm(net, [])
    for k, v in net.bn.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not net.training and net.bn.momentum == 0.1
    with pytest.raises(ValueError, match="no BatchNorm"):
        recalibrate_batchnorm(nn.Sequential(nn.Conv2d(3, 3, 1)), batches())
    with pytest.raises(ValueError, match="max_images"):
        recalibrate_batchnorm(net, batches(), max_images=0)


def test_brings_a_pruned_resnet_back_from_near_chance(data_dir):
    from ocnna_fast import prune, score
    from ocnna_fast.data.local import cifar10_jpeg
    from ocnna_fast.models import build, load_weights
    from ocnna_fast.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD
    from ocnna_fast.recovery.distill import TensorImages, evaluate

    model = build("resnet20")
    load_weights(model, data_dir / "resnet-cifar10-akamaster" / "resnet20-12fca82f.th")
    model.eval()
    x, y = cifar10_jpeg("train", data_dir, limit=600, seed=5)
    train = TensorImages(x[:400], y[:400], CIFAR_MEAN, CIFAR_STD)
    check = TensorImages(x[400:], y[400:], CIFAR_MEAN, CIFAR_STD)
    scores = score(model, (b for b, _ in train.batches(100)), progress=False)
    # inner convs only, as the measurement in README (stage widths pruned by OCNNA's scores fare worse)
    pruned, _ = prune(
        model, scores, 40, torch.zeros(1, 3, 32, 32), ignored_layers=list(model.ocnna_ignored_layers("inner"))
    )
    before = evaluate(pruned, check)
    recalibrate_batchnorm(pruned, (b for b, _ in train.batches(100)))
    after = evaluate(pruned, check)
    assert evaluate(model, check) > 70
    assert after > before + 20, (before, after)
