"""``ocnna-fast evaluate``: top-1 accuracy of a model or of a pruned folder."""

from __future__ import annotations

import argparse
import json

import torch

from .._util.precision import resolve_precision
from ..data.evaluation import evaluate
from . import loading, options


def register(sub) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="top-1 accuracy of a model or a pruned model directory",
        description="Top-1 accuracy of a zoo or user model, or of a pruned model folder, on the test images.",
        epilog="example: ocnna-fast evaluate --pruned runs/r56/pruned",
    )
    options.add_model_options(ev)
    options.add_data_options(ev, [*options.DATASET_CHOICES, options.LOSSLESS_20])
    options.add_run_options(ev, batch=256, precision=True)
    ev.add_argument("--pruned", help="a directory written by 'prune' (its pruned/ folder)")
    ev.add_argument("--eval-images", type=options.COUNT, default=None, help="test images (default all)")
    ev.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.pruned:
        model, spec = loading.load_pruned_folder(args)
        _refuse_contradictions(args, spec)
        what = args.pruned
        args.arch = spec.get("arch", args.arch)
        args.input_size = spec.get("input_size", args.input_size)
        size = loading.input_spec(args)[0]
        with torch.no_grad():
            classes = model.eval()(torch.zeros(1, 3, size, size)).shape[-1]
        if classes != loading.num_classes(args.dataset, args.data_dir):
            raise ValueError(
                f"{args.pruned} predicts {classes} classes but --dataset {args.dataset} has "
                f"{loading.num_classes(args.dataset, args.data_dir)}; pass the data set it was pruned on"
            )
    else:
        model, what = loading.load_model(
            args.arch, args.weights, args.data_dir, args.dataset, args.input_size, seed=args.seed
        )
    data = loading.images(args, "test", args.eval_images, False, args.seed)
    acc = evaluate(
        model, data, args.batch_size, device=args.device, progress=not args.no_progress, precision=args.precision
    )
    line = {"model": what, "dataset": loading.describe(args.dataset), "images": len(data), "accuracy": acc}
    precision = resolve_precision(args.precision, args.device)
    print(json.dumps({**line, "device": args.device, "precision": precision}))
    return 0


def _refuse_contradictions(args: argparse.Namespace, spec: dict) -> None:
    """A pruned folder records its model: an option that says otherwise is refused, not ignored."""
    arch, size = spec.get("arch", "?"), spec.get("input_size")
    if args.weights:
        raise ValueError(f"--weights {args.weights}: {args.pruned} carries its own weights; drop --weights")
    if getattr(args, "given_arch", None) and args.given_arch != arch:
        raise ValueError(f"--arch {args.given_arch}: {args.pruned} was pruned from {arch}; drop --arch or fix it")
    if args.input_size is not None and size is not None and args.input_size != size:
        raise ValueError(f"--input-size {args.input_size}: {args.pruned} takes {size}px inputs; drop --input-size")
