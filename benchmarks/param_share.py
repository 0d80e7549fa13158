"""Share of parameters OCNNA keeps at k = 20, 40, 60: the CIFAR ResNets
(pretrained, scored on 500 shipped CIFAR-10 training images) with stage widths
pruned (--scope full, the default) and inner convs only (--scope inner), beside
torchvision's ResNet-50 (untrained, 8 random 224x224 images; the paper reports
37.44% kept at k=40 on ImageNet).  Prints README's table.

    python benchmarks/param_share.py
"""

from __future__ import annotations

import torch

from ocnna_fast import count_params, prune, score
from ocnna_fast.data.local import cifar10_jpeg, normalize, pretrained_weights
from ocnna_fast.models import build, load_weights
from ocnna_fast.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD

KS = (20, 40, 60)


def shares(model, batches, example, ignored):
    s = score(model, batches, progress=False)
    return [count_params(prune(model, s, k, example, ignored_layers=ignored)[0]) / count_params(model) for k in KS]


def main() -> None:
    x, _ = cifar10_jpeg("train", limit=500, seed=1)
    images = normalize(x, CIFAR_MEAN, CIFAR_STD)
    batches = [images[i : i + 100] for i in range(0, len(images), 100)]
    print("| model | scope | " + " | ".join(f"k={k}" for k in KS) + " |")
    print("| --- | --- |" + " --- |" * len(KS))
    for arch in ("resnet20", "resnet32", "resnet44", "resnet56"):
        model = load_weights(build(arch), pretrained_weights(arch)).eval()
        ex = torch.zeros(1, 3, 32, 32)
        for scope in ("full", "inner"):
            row = shares(model, batches, ex, list(model.ocnna_ignored_layers(scope)))
            print(f"| {arch} | {scope} | " + " | ".join(f"{v:.3f}" for v in row) + " |", flush=True)
    torch.manual_seed(0)
    r50 = build("resnet50", num_classes=1000).eval()
    row = shares(r50, [torch.randn(8, 3, 224, 224)], torch.zeros(1, 3, 224, 224), [])
    print("| resnet50 (torchvision, untrained) | every conv | " + " | ".join(f"{v:.3f}" for v in row) + " |")


if __name__ == "__main__":
    main()
