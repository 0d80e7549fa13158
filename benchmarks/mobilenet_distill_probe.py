"""Can distillation on the ImageNet sample's 500 training images recover a
pruned MobileNet?  MobileNet v1 0.75/192 pruned by L1 at k=20 (bias
compensated), then one epoch of distillation from the unpruned model at each
learning rate, from the same pruned start; top-1 on the odd half.

    python benchmarks/mobilenet_distill_probe.py W.safetensors [--k 20] [--lrs 1e-2 1e-3 1e-4]

W: the weights converted from the Coral TFLite file (`ocnna-fast convert-tflite
mobilenet_v1_0.75_192_quant.tflite --out W.safetensors`).  About 2 minutes per
learning rate on 2 cores.
"""

from __future__ import annotations

import argparse
import copy

import torch

from ocnna_fast.data.local import load_split
from ocnna_fast.models import build, input_spec, load_weights
from ocnna_fast.recovery.distill import TensorImages, distill, evaluate
from ocnna_fast.recovery.recover import recalibrate
from ocnna_fast.selection.criteria import Context, criterion_values
from ocnna_fast.surgery.prune import prune

ARCH = "mobilenet_v1_075_imagenet"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("--k", type=float, default=20.0)
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-2, 1e-3, 1e-4])
    args = ap.parse_args()
    size, mean, std, crop = input_spec(ARCH)
    model = load_weights(build(ARCH, num_classes=1000), args.weights).eval()

    def half(split: str, augment: bool) -> TensorImages:
        x, y = load_split("imagenet-sample", split, size=size, crop_fraction=crop)
        return TensorImages(x, y, mean, std, augment=augment)

    test, calib, train = half("test", False), half("train", False), half("train", True)
    batches = [x for x, _ in calib.batches(50)]
    example = torch.zeros(1, 3, size, size)
    ctx = Context(model, batches, [y for _, y in calib.batches(50)], example, [], seed=0)
    start, plan = prune(
        model, None, args.k, example, importance=criterion_values("l1", ctx), rule="count", ignored_layers=[]
    )
    recalibrate(start, model, plan, batches)
    print(f"base {evaluate(model, test):.1f}%; L1 k={args.k:g} after bias compensation {evaluate(start, test):.1f}%")
    for lr in args.lrs:
        student = copy.deepcopy(start)
        distill(student, model, train, epochs=1, lr=lr, batch_size=50, progress=False)
        print(f"one epoch of distillation at lr {lr:g}: {evaluate(student, test):.1f}%", flush=True)


if __name__ == "__main__":
    main()
