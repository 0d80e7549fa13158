"""Is the pruned model faster where it will run?  ResNet-56 pruned by OCNNA at
k = 20, 40, 60, base vs pruned latency in ONNX Runtime (CPU provider) and
PyTorch eager, batch 1 and 64, with the ONNX file sizes; every figure is
measured side by side in this one process.

    python benchmarks/deploy_latency.py [--arch resnet56] [--k 20 40 60] [--repeats 30]
        [--json benchmarks/results/deploy_latency.json]
    python benchmarks/deploy_latency.py --arch mobilenet_v1_075_imagenet --weights W.safetensors
        (ImageNet zoo models: scored on the ImageNet sample's even half, at the model's input size)

Needs the deploy extra (pip install ".[deploy]").  Run it on a quiet machine:
latency under another job's load means nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from ocnna_fast import prune, score
from ocnna_fast.data.local import load_split, normalize, pretrained_weights
from ocnna_fast.deploy.export import compare_latency, require_deploy
from ocnna_fast.models import build, input_spec, load_weights
from ocnna_fast.surgery.prune import count_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="resnet56")
    ap.add_argument("--k", type=float, nargs="+", default=[20.0, 40.0, 60.0])
    ap.add_argument("--score-images", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--weights", default=None, help="weights file (default: the shipped CIFAR checkpoint)")
    ap.add_argument("--json", default=None, help="also write the measurements here")
    args = ap.parse_args()
    require_deploy()
    size, mean, std, crop = input_spec(args.arch)
    imagenet = size != 32
    model = build(args.arch, num_classes=1000 if imagenet else 10)
    model = load_weights(model, args.weights or pretrained_weights(args.arch)).eval()
    dataset = "imagenet-sample" if imagenet else "cifar10-jpeg"
    x, _ = load_split(dataset, "train", limit=args.score_images, seed=1, size=size, crop_fraction=crop)
    images = normalize(x, mean, std)
    scores = score(model, [images[i : i + 128] for i in range(0, len(images), 128)], progress=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: the first model timed in a process runs cold
        compare_latency(model, model, size, max(3, args.repeats // 10), Path(tmp) / "work")
    print(f"{args.arch}, torch {torch.__version__}, {torch.get_num_threads()} threads; median ms (speed-up)")
    print("| k | RPR | ONNX MB base -> pruned | ORT b1 | ORT b64 | eager b1 | eager b64 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for k in args.k:
        pruned, _ = prune(model, scores, k, torch.zeros(1, 3, size, size))
        with tempfile.TemporaryDirectory() as tmp:
            lat = compare_latency(model, pruned, size, args.repeats, Path(tmp) / "work")
        row = {"k": k, "rpr": count_params(pruned) / count_params(model), "latency": lat}
        rows.append(row)

        def cell(key: str) -> str:
            return (
                f"{lat['base'][key]['median']:.2f} -> {lat['pruned'][key]['median']:.2f} ({lat['speedup'][key]:.2f}x)"
            )

        print(
            f"| {k:g} | {row['rpr']:.3f} | {lat['base']['onnx_bytes'] / 1e6:.2f} -> "
            f"{lat['pruned']['onnx_bytes'] / 1e6:.2f} | {cell('onnxruntime_b1')} | {cell('onnxruntime_b64')} | "
            f"{cell('eager_b1')} | {cell('eager_b64')} |",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"arch": args.arch, "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
