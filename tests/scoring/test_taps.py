"""tap='post_activation': the map after a conv's own BatchNorm + ReLU, scored exactly."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from ocnna_fast import Scores, score
from ocnna_fast.scoring import reference
from ocnna_fast.scoring.taps import post_activation_taps


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.act = nn.ReLU(inplace=True)
        self.b = nn.Conv2d(5, 4, 3, padding=1)  # -> F.relu directly
        self.c = nn.Conv2d(4, 4, 3, padding=1)  # its output is added to b's: no activation of its own
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        b = torch.nn.functional.relu(self.b(self.act(self.bn(self.a(x)))))
        return self.fc(torch.relu(b + self.c(b)).mean((2, 3)))


def _net():
    torch.manual_seed(0)
    net = Net().eval()
    net.bn.running_mean.uniform_(-0.5, 0.5)  # some channels rectified to exact zeros on many pixels
    return net


def test_chains_are_found():
    net = _net()
    taps = post_activation_taps(net, {"a": net.a, "b": net.b, "c": net.c})
    assert taps["a"][0] == "bn" and taps["a"][1] is torch.relu
    assert taps["b"][0] == "b" and taps["b"][1] is torch.relu
    assert taps["c"] == ("c", None)


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("n_components", [None, 0.9])
def test_post_activation_scores_equal_the_oracle(overlap, n_components):
    net = _net()
    x = torch.randn(12, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match="1 conv"):
        s = score(
            net, [x[:5], x[5:]], n_components=n_components, tap="post_activation", overlap=overlap, progress=False
        )
    assert s.tap == "post_activation"
    with torch.no_grad():
        a = torch.relu(net.bn(net.a(x)))
        b = torch.relu(net.b(a))
        c = net.c(b)
    for name, maps in (("a", a), ("b", b), ("c", c)):
        want = reference.score_activations(maps, n_components)
        np.testing.assert_allclose(s[name].score.numpy(), want["score"], rtol=1e-4, atol=1e-9, err_msg=name)
        assert s[name].dead.tolist() == want["dead"].tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = score(net, [x], progress=False)
    assert not torch.allclose(plain["a"].score, s["a"].score)  # the tap matters
    assert torch.equal(net(x), net(x))  # the in-place ReLU still runs as before


def test_tap_is_checked_saved_and_part_of_the_checkpoint(tmp_path):
    net = _net()
    x = torch.randn(4, 3, 10, 10)
    with pytest.raises(ValueError, match="tap"):
        score(net, [x], tap="after_relu", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = score(net, [x], tap="post_activation", progress=False)
    s.save(tmp_path / "s.safetensors")
    assert Scores.load(tmp_path / "s.safetensors").tap == "post_activation"
    ck = str(tmp_path / "run.ckpt")

    def stop():
        yield x
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score(net, stop(), checkpoint=ck, checkpoint_every=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="tap"):
            score(net, [x, x], checkpoint=ck, tap="post_activation", progress=False)
