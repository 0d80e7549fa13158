"""``ocnna-fast score``: OCNNA scores of every conv of a model, in one pass."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .._util.atomic import write_text_atomic
from .._version import __version__
from ..scoring.scorer import score
from . import loading, options
from .outdir import out_dir
from .output import writer_lock


def register(sub) -> None:
    s = sub.add_parser(
        "score",
        help="score the filters of a pretrained model on shipped images",
        description="Scores every prunable conv of a model in one pass over the images: per filter the coefficient of variation (and mean, std) of its maps' PCA energies (docs/scoring.md); writes scores.safetensors and summary.json.",
        epilog="example: ocnna-fast score --arch resnet56 --images 1000 --n-components 0.95 --out runs/r56-scores",
    )
    options.add_model_options(s)
    options.add_data_options(s, [*options.DATASET_CHOICES, options.LOSSLESS_20])
    s.add_argument(
        "--images", type=options.SCORE_IMAGES, default=1000, help="images to score on (class-balanced; default 1000)"
    )
    s.add_argument(
        "--n-components",
        type=options.n_components,
        default=None,
        help="PCA components per map: none (default), an int, or a ratio in (0, 1)",
    )
    s.add_argument("--out", default="runs/score", help="output folder (default runs/score)")
    options.add_run_options(s, runs="the scoring pass")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = out_dir(args.out, "score", inputs=[w for w in (args.weights,) if w])  # refused before the work, not after
    model, weights = loading.load_model(
        args.arch, args.weights, args.data_dir, args.dataset, args.input_size, seed=args.seed
    )
    if args.dataset != options.LOSSLESS_20:
        loading.check_data_fits(args)
    data = loading.images(args, "test", args.images, False, args.seed)
    batches = (x for x, _ in data.batches(args.batch_size))
    t = time.perf_counter()
    scores = score(model, batches, n_components=args.n_components, device=args.device, progress=not args.no_progress)
    seconds = time.perf_counter() - t
    with writer_lock(out):
        scores.save(out / "scores.safetensors")
        _write_summary(args, out, scores, weights, len(data), seconds)
    return 0


def _write_summary(args: argparse.Namespace, out: Path, scores, weights: str, images: int, seconds: float) -> None:
    layers = {
        name: {
            "channels": ls.num_channels,
            "dead": int(ls.dead.sum()),
            "score_min": float(ls.score.min()),
            "score_mean": float(ls.score.mean()),
            "score_max": float(ls.score.max()),
        }
        for name, ls in scores.items()
    }
    summary = {
        "arch": args.arch,
        "weights": weights,
        "dataset": loading.describe(args.dataset),
        "images": images,
        "n_components": args.n_components,
        "scoring_seconds": seconds,
        "images_per_second": images / seconds,
        "ocnna_fast": __version__,
        "torch": torch.__version__,
        "layers": layers,
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    print(
        f"scored {len(scores)} conv layers of {args.arch} on {images} images "
        f"(n_components={args.n_components!r}) in {seconds:.2f} s ({images / seconds:.0f} images/s)"
    )
    print(f"{'layer':<22} {'filters':>7} {'dead':>5} {'score min':>10} {'mean':>8} {'max':>8}")
    for name, s in layers.items():
        print(
            f"{name:<22} {s['channels']:>7} {s['dead']:>5} {s['score_min']:>10.4f} "
            f"{s['score_mean']:>8.4f} {s['score_max']:>8.4f}"
        )
    print(f"wrote {out / 'scores.safetensors'} and {out / 'summary.json'}")
