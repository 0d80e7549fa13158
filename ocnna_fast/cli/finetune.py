"""``ocnna-fast finetune``: adapt a model to a data set (cross-entropy), resumable."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .._util.atomic import save_tensors
from .._util.distributed import is_main
from .._util.placement import describe_device
from .._util.precision import resolve_precision
from ..data.evaluation import evaluate
from ..recovery.distill import finetune
from . import loading, options
from .outdir import out_dir
from .output import write_report, writer_lock


def register(sub) -> None:
    ft = sub.add_parser(
        "finetune",
        help="adapt a model to the shipped JPEG CIFAR-10 (cross-entropy)",
        description="Fine-tunes a model with cross-entropy on the training images (checkpointed every epoch, resumable); writes model.safetensors.",
        epilog="example: ocnna-fast finetune --arch resnet56 --epochs 2 --out runs/r56-jpeg",
    )
    options.add_model_options(ft)
    options.add_data_options(ft)
    options.add_run_options(ft, precision=True)
    ft.add_argument("--epochs", type=options.NONNEG, default=2, help="epochs of fine-tuning (default 2)")
    ft.add_argument("--lr", type=options.LEARNING_RATE, default=0.01, help="learning rate (SGD, cosine; default 0.01)")
    ft.add_argument("--eval-images", type=options.COUNT, default=None, help="test images for accuracy (default all)")
    ft.add_argument("--train-images", type=options.COUNT, default=None, help="training images (default all)")
    ft.add_argument("--out", default="runs/finetune", help="output folder (default runs/finetune)")
    ft.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    size = loading.check_data_fits(args)
    out = out_dir(args.out, "finetune", inputs=[w for w in (args.weights,) if w])  # refused before anything loads
    model, weights = loading.load_model(args.arch, args.weights, args.data_dir, args.dataset, size, seed=args.seed)
    with writer_lock(out):
        return _finetune_into(args, model, weights, out)


def _finetune_into(args: argparse.Namespace, model, weights: str, out: Path) -> int:
    evalset = loading.images(args, "test", args.eval_images, False, args.seed)
    trainset = loading.images(args, "train", args.train_images, True, args.seed + 2)
    print(f"device: {describe_device(args.device)}")
    before = evaluate(model, evalset, device=args.device, precision=args.precision)
    t = time.perf_counter()
    history = finetune(
        model,
        trainset,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        checkpoint_dir=out / "finetune",
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - t
    after = evaluate(model, evalset, precision=args.precision)
    model.cpu()  # saved from the CPU: the file loads anywhere
    if not is_main():
        return 0
    save_tensors(model.state_dict(), out / "model.safetensors")
    report = {
        "arch": args.arch,
        "dataset": loading.describe(args.dataset),
        "base_weights": weights,
        "epochs": args.epochs,
        "accuracy_before": before,
        "accuracy_after": after,
        "eval_images": len(evalset),
        "train_images": len(trainset),
        "finetune_seconds": seconds,
        "device": describe_device(args.device),
        "precision": resolve_precision(args.precision, args.device),
        "history": history,
        "weights_out": str(out / "model.safetensors"),
    }
    write_report(out, report, f"Fine-tuning {args.arch} on {args.dataset}")
    print(f"accuracy {before:.2f}% -> {after:.2f}% after {args.epochs} epochs; wrote {out / 'model.safetensors'}")
    return 0
