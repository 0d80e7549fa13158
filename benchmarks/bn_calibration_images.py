"""BatchNorm re-estimation on plain or augmented training images: what each
leaves of the unpruned base and of a pruned network, on the CIFAR ResNets.

    python benchmarks/bn_calibration_images.py --json benchmarks/results/bn-calibration-images.json

The CIFAR ResNets were trained on padded random crops and flips, so their
running statistics describe augmented images; `prune` re-estimates them on
plain (un-augmented) training images.  For each base (akamaster's and the
JPEG-adapted one) this re-estimates BatchNorm on the same 1,000
class-balanced JPEG training images (shuffled, batches of 128), once plain
and once with the training augmentation, for the unpruned network and for
the network pruned to the widths a search-cost run chose (channels ranked
by L1), and evaluates each on 2,000 test images.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# (architecture, widths of a finished run at MACs 0.5: report.json)
CASES = [
    ("resnet20", "search-cost-resnet20-draws/resnet20-macs0.5-full-r100-s0"),
    ("resnet20", "search-cost-resnet20-draws/resnet20-macs0.5-full-r100-s1"),
    ("resnet56", "search-cost-resnet56-top-down/resnet56-macs0.5-one-pass-r40-c1-s0"),
]


class _Shuffled:
    """The images in a seeded order, batch by batch (as the job's loaders give them)."""

    def __init__(self, data) -> None:
        self.data = data

    def __iter__(self):
        yield from self.data.batches(128, shuffle=True, gen=torch.Generator().manual_seed(1))


def measure(arch: str, base_name: str, run: str) -> dict:
    import torch_pruning as tp

    from ocnna_fast.data.evaluation import evaluate
    from ocnna_fast.data.local import adapted_weights, load_split, pretrained_weights
    from ocnna_fast.data.tensorimages import TensorImages
    from ocnna_fast.models import build, load_weights
    from ocnna_fast.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD
    from ocnna_fast.recovery.batchnorm import recalibrate_batchnorm
    from ocnna_fast.surgery.prune import prune

    test = TensorImages(*load_split("cifar10-jpeg", "test", limit=2000, seed=0), CIFAR_MEAN, CIFAR_STD)
    train = load_split("cifar10-jpeg", "train", limit=1000, seed=0)
    weights = adapted_weights(arch) if base_name == "adapted" else pretrained_weights(arch)
    base = load_weights(build(arch), weights).eval()
    widths = json.loads((RESULTS / run / "report.json").read_text())["widths"]
    keep = {name: kept for name, (_, kept) in widths.items()}
    example = torch.randn(2, 3, 32, 32)
    pruned, _ = prune(
        copy.deepcopy(base), None, 0, example, importance=tp.importance.MagnitudeImportance(p=1), keep=keep
    )
    out = {"arch": arch, "base": base_name, "widths_of": run, "base_accuracy": evaluate(base, test, progress=False)}
    for images, augment in (("plain", False), ("augmented", True)):
        for name, model in (("unpruned", base), ("pruned", pruned)):
            m = copy.deepcopy(model)
            recalibrate_batchnorm(m, _Shuffled(TensorImages(*train, CIFAR_MEAN, CIFAR_STD, augment=augment)))
            out[f"{name}_{images}"] = evaluate(m, test, progress=False)
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True)
    a = p.parse_args()
    rows = [measure(arch, base, run) for arch, run in CASES for base in ("akamaster", "adapted")]
    Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
