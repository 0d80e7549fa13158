"""score() of this checkout against score() as ``ocnna_fast/scoring/scorer.py`` was at
another commit (the rest of the package shared), timed in interleaved pairs in
one process, so a refactor of the scoring loop is checked for speed on a
noisy machine.

    python benchmarks/score_ab.py a1b87ab [--pairs 11] [--n-components none]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import ocnna_fast
from ocnna_fast.data.local import load_split, normalize
from ocnna_fast.models import build, load_weights
from ocnna_fast.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD

REPO = Path(__file__).resolve().parents[1]


def scoring_at(rev: str):
    """The scoring module as it was at ``rev``, importing the current package's other modules."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:ocnna_fast/scoring/scorer.py"], capture_output=True, text=True
    )
    if source.returncode:
        raise SystemExit(
            f"{rev} has no ocnna_fast/scoring/scorer.py (the scorer sat at ocnna_fast/scoring.py before it)"
        )
    source = source.stdout
    path = Path(tempfile.mkdtemp()) / "scoring_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("ocnna_fast.scoring._scorer_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("rev")
    p.add_argument("--pairs", type=int, default=11)
    p.add_argument("--n-components", default="none")
    args = p.parse_args()
    nc = None if args.n_components == "none" else float(args.n_components)
    old = scoring_at(args.rev)
    model = build("resnet56")
    load_weights(model, ocnna_fast.data.local.pretrained_weights("resnet56"))
    x, _ = load_split("cifar10-jpeg", "test", limit=512)
    batches = list(normalize(x, CIFAR_MEAN, CIFAR_STD).split(128))
    runs = {"new": ocnna_fast.score, "old": old.score}
    a = runs["new"](model, batches, n_components=nc, progress=False)
    b = runs["old"](model, batches, n_components=nc, progress=False)
    same = all(torch.equal(a[n].score, b[n].score) for n in a)
    times = {k: [] for k in runs}
    for i in range(args.pairs):
        for k in ("new", "old") if i % 2 == 0 else ("old", "new"):
            t = time.perf_counter()
            runs[k](model, batches, n_components=nc, progress=False)
            times[k].append(time.perf_counter() - t)
    ratios = [n / o for n, o in zip(times["new"], times["old"])]
    print(
        f"score(), ResNet-56, 4 batches of 128, n_components={nc}: this checkout {statistics.median(times['new']):.3f} s, "
        f"{args.rev} {statistics.median(times['old']):.3f} s (medians of {args.pairs}); "
        f"new/old median ratio {statistics.median(ratios):.3f}; identical scores: {same}"
    )


if __name__ == "__main__":
    main()
