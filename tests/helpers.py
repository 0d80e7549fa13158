"""What several test files share: small networks, fake scores, map and
image-folder generators.  Test modules import these, never each other."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ocnna_fast import prunable_convs
from ocnna_fast.budget.search import budget_groups
from ocnna_fast.recovery.batchnorm import recalibrate_batchnorm
from ocnna_fast.scoring.scores import LayerScores

# ---- scores (test_pruning, test_integration_torch_pruning) ----------------------------


def fake_scores(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, conv in prunable_convs(model).items():
        c = conv.out_channels
        s = torch.rand(c, generator=g, dtype=torch.float64) + 0.05
        out[name] = LayerScores(
            score=s,
            mean=torch.ones(c, dtype=torch.float64),
            std=s.clone(),
            count=1,
            dead=torch.zeros(c, dtype=torch.bool),
        )
    return out


# ---- activation maps (test_energy_vs_oracle, test_rank_statistic) ----------------------


def make_maps(rng, kind: str, n: int, c: int, h: int, w: int) -> np.ndarray:
    a = rng.standard_normal((n, c, h, w))
    if kind == "relu":
        a = np.maximum(a + 0.3, 0)
    elif kind == "constant":
        a = np.broadcast_to(rng.standard_normal((n, c, 1, 1)) * 5, a.shape).copy()
    elif kind == "zero":
        a = np.zeros_like(a)
    elif kind == "low_rank":  # rank-2 maps: most PCA components are exactly zero
        u = rng.standard_normal((n, c, h, 2))
        v = rng.standard_normal((n, c, 2, w))
        a = u @ v
    elif kind == "offset":  # a large common offset on top of small variation
        a = 1000.0 + 0.01 * a
    elif kind == "constant_columns":  # every column constant, columns differ: Xc == 0
        a = np.broadcast_to(rng.standard_normal((n, c, 1, w)), a.shape).copy()
    elif kind == "sparse":  # post-ReLU-like: isolated non-zeros in a few columns
        live = np.zeros(w, dtype=bool)
        live[rng.choice(w, size=min(w, 3), replace=False)] = True
        keep = (rng.random(a.shape) < 0.12) & live
        a = np.where(keep, np.abs(a) * 0.05, 0.0)
    elif kind == "zero_rows_cols":  # rectified noise with whole rows and columns zeroed
        a = np.maximum(a, 0)
        a[:, :, rng.random(h) < 0.3, :] = 0.0
        a[:, :, :, rng.random(w) < 0.3] = 0.0
    elif kind == "rank_block":  # a rank-1 or rank-2 block inside an otherwise zero map
        a = np.zeros_like(a)
        bh, bw = max(1, h // 3), max(1, w // 3)
        r = int(rng.integers(1, 3))
        block = rng.standard_normal((n, c, bh, r)) @ rng.standard_normal((n, c, r, bw))
        a[:, :, h - bh :, :bw] = np.maximum(block, 0)
    return a


SPARSE_KINDS = ["sparse", "zero_rows_cols", "rank_block"]


# ---- a MobileNet-like network and its folded twin (test_foldedbn, test_reconstruction) --


class FoldableNet(nn.Module):
    """conv-BN-ReLU6, pointwise, depthwise, pointwise, classifier (MobileNet's
    pattern); ``folded``: the same with biases and no BatchNorm."""

    def __init__(self, folded: bool = False) -> None:
        super().__init__()

        def conv(i, o, k, g=1):
            return nn.Conv2d(i, o, k, padding=k // 2, groups=g, bias=folded)

        def norm(c):
            return nn.Identity() if folded else nn.BatchNorm2d(c)

        self.c1, self.b1 = conv(3, 16, 3), norm(16)
        self.c2, self.b2 = conv(16, 24, 1), norm(24)
        self.dw, self.b3 = conv(24, 24, 3, 24), norm(24)
        self.c3, self.b4 = conv(24, 32, 1), norm(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        for c, b in ((self.c1, self.b1), (self.c2, self.b2), (self.dw, self.b3), (self.c3, self.b4)):
            x = F.relu6(b(c(x)))
        return self.fc(x.mean((2, 3)))


PAIRS = (("c1", "b1"), ("c2", "b2"), ("dw", "b3"), ("c3", "b4"))


def folded_pair(seed=0):
    """A BatchNorm network with its statistics estimated on the calibration
    batches, and its folded copy."""
    torch.manual_seed(seed)
    net = FoldableNet().eval()
    with torch.no_grad():
        for _, b in PAIRS:
            bn = getattr(net, b)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    batches = [torch.randn(64, 3, 16, 16)]
    recalibrate_batchnorm(net, batches)
    folded = FoldableNet(folded=True).eval()
    with torch.no_grad():
        for c, b in PAIRS:
            conv, bn, out = getattr(net, c), getattr(net, b), getattr(folded, c)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            out.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            out.bias.copy_(bn.bias - bn.running_mean * scale)
        folded.fc.load_state_dict(net.fc.state_dict())
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-5)
    return net, folded, batches


def random_values(model, example):
    rng = np.random.default_rng(1)
    _, _, _, found = budget_groups(model, example, [], {n: None for n, _ in model.named_modules()})
    return {info.root: rng.random(info.width) for _, info in found}


# ---- ImageNet-layout folders (test_user_data, test_distributed) -----------------------

CLASSES = ["n01440764", "n01443537", "n01484850"]  # three ImageNet wnids, sorted
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_folder(root, per_class=(4, 4), shape=(32, 32), seed=0):
    """root/train and root/val with ``per_class`` JPEG-free (PNG, lossless)
    images per class; returns {split: [(uint8 HWC array, label)]} in file order."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    for split, n in zip(("train", "val"), per_class):
        items = []
        for label, wnid in enumerate(CLASSES):
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(n):
                h, w = shape if i % 2 == 0 else (shape[0] + 8, shape[1])  # mixed sizes and aspect ratios
                a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(a).save(d / f"{wnid}_{i}.png")
                items.append((a, label))
        written[split] = items
    return written
