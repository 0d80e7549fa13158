"""Which torchvision classification CNNs ``ocnna_fast.prune`` handles: each
model (untrained weights, 4 random images of 64x64, 299x299 for Inception v3)
is scored, pruned at k=40, checked for its output shape and round-tripped
through save_pruned / load_pruned.  Prints README's table.

    python benchmarks/torchvision_support.py [--models resnet18 ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch
import torchvision

from ocnna_fast import count_params, load_pruned, prune, save_pruned, score
from ocnna_fast.models import TORCHVISION_PRUNABLE

MODELS = [*TORCHVISION_PRUNABLE, "shufflenet_v2_x0_5"]  # the last one to show the refusal


def check(name: str) -> str:
    torch.manual_seed(0)
    kw = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    build = lambda: getattr(torchvision.models, name)(**kw).eval()  # noqa: E731
    model = build()
    size = 299 if name == "inception_v3" else 64
    x = torch.randn(4, 3, size, size)
    t = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruned, plan = prune(model, score(model, [x], progress=False), 40, x[:1])
            with tempfile.TemporaryDirectory() as d:
                save_pruned(d, pruned, plan)
                again = load_pruned(d, base_model=build())
            with torch.no_grad():
                same = torch.equal(again(x), pruned(x)) and pruned(x).shape == model(x).shape
    except ValueError as exc:
        return f"| {name} | refused: {str(exc).split(';')[0][:90]}... | | |"
    rpr = count_params(pruned) / count_params(model)
    return f"| {name} | {'yes' if same else 'NO'} | {rpr:.3f} | {time.perf_counter() - t:.1f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    print("| model | pruned, same outputs after save/load | RPR at k=40 | seconds |")
    print("| --- | --- | --- | --- |")
    for name in args.models:
        print(check(name), flush=True)


if __name__ == "__main__":
    main()
