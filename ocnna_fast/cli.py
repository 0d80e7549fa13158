"""``ocnna-fast`` command line.

    ocnna-fast score --arch resnet56 --images 2000 --n-components 0.95 --out runs/score

scores every prunable conv of a pretrained model on the shipped images and
writes ``scores.safetensors`` and ``summary.json`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from . import __version__, build_info
from .scoring import score

CIFAR_RESNETS = {"resnet20": "resnet20-12fca82f.th", "resnet32": "resnet32-d509ac18.th",
                 "resnet44": "resnet44-014dd654.th", "resnet56": "resnet56-4bfd9763.th"}


def _n_components(text: str):
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'none', an int or a float in (0, 1), got {text!r}") from None


def _load_model(arch: str, weights: Optional[str], data_dir: Optional[str]):
    from .data import data_root
    from .models import cifar_resnet, load_akamaster_checkpoint

    if arch not in CIFAR_RESNETS:
        raise SystemExit(f"error: unknown --arch {arch!r}; choose from {', '.join(CIFAR_RESNETS)}")
    model = cifar_resnet(int(arch[len("resnet"):]))
    path = Path(weights) if weights else data_root(data_dir) / "resnet-cifar10-akamaster" / CIFAR_RESNETS[arch]
    load_akamaster_checkpoint(model, path)
    return model.eval(), str(path)


def _load_images(dataset: str, images: int, data_dir: Optional[str]):
    from .data import cifar10_jpeg, foolbox_samples, normalize
    from .models.cifar_resnet import CIFAR_MEAN, CIFAR_STD

    if dataset == "cifar10-jpeg-test":
        x, y = cifar10_jpeg("test", data_dir, limit=images)
    elif dataset == "cifar10-lossless-20":
        x, y = foolbox_samples("cifar10", data_dir)
        x, y = x[:images], y[:images]
    else:
        raise SystemExit(f"error: unknown --dataset {dataset!r}")
    return normalize(x, CIFAR_MEAN, CIFAR_STD), y


def cmd_score(args: argparse.Namespace) -> int:
    if args.images < 1:
        raise SystemExit("error: --images must be >= 1")
    model, weights = _load_model(args.arch, args.weights, args.data_dir)
    x, _ = _load_images(args.dataset, args.images, args.data_dir)
    batches = [x[i:i + args.batch_size] for i in range(0, len(x), args.batch_size)]
    t = time.perf_counter()
    scores = score(model, batches, n_components=args.n_components, device=args.device,
                   progress=not args.no_progress)
    seconds = time.perf_counter() - t
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scores.save(out / "scores.safetensors")
    layers = {
        name: {"channels": ls.num_channels, "dead": int(ls.dead.sum()),
               "score_min": float(ls.score.min()), "score_mean": float(ls.score.mean()),
               "score_max": float(ls.score.max())}
        for name, ls in scores.items()
    }
    summary = {"arch": args.arch, "weights": weights, "dataset": args.dataset, "images": len(x),
               "n_components": args.n_components, "scoring_seconds": seconds,
               "images_per_second": len(x) / seconds, "ocnna_fast": __version__, "torch": torch.__version__,
               "layers": layers}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"scored {len(scores)} conv layers of {args.arch} on {len(x)} images "
          f"(n_components={args.n_components!r}) in {seconds:.2f} s ({len(x) / seconds:.0f} images/s)")
    print(f"{'layer':<22} {'filters':>7} {'dead':>5} {'score min':>10} {'mean':>8} {'max':>8}")
    for name, s in layers.items():
        print(f"{name:<22} {s['channels']:>7} {s['dead']:>5} {s['score_min']:>10.4f} "
              f"{s['score_mean']:>8.4f} {s['score_max']:>8.4f}")
    print(f"wrote {out / 'scores.safetensors'} and {out / 'summary.json'}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    print(json.dumps(build_info(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ocnna-fast", description="Fast, exact OCNNA filter scoring for PyTorch CNNs")
    p.add_argument("--version", action="version", version=f"ocnna-fast {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="score the filters of a pretrained model on shipped images")
    s.add_argument("--arch", default="resnet56", help=f"one of {', '.join(CIFAR_RESNETS)} (default resnet56)")
    s.add_argument("--weights", help="checkpoint file (default: the shipped one for --arch)")
    s.add_argument("--dataset", default="cifar10-jpeg-test", choices=["cifar10-jpeg-test", "cifar10-lossless-20"])
    s.add_argument("--images", type=int, default=1000, help="images to score on (class-balanced subset)")
    s.add_argument("--n-components", type=_n_components, default=None,
                   help="PCA components per map: none (default), an int, or a ratio in (0, 1)")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    s.add_argument("--data-dir", default=None, help="data root (default $OCNNA_DATA_DIR or ../shared/data)")
    s.add_argument("--out", default="runs/score", help="output folder")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_score)

    i = sub.add_parser("info", help="print build information")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
