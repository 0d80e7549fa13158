"""``ocnna-fast`` command line.

    ocnna-fast score    --arch resnet56 --images 2000 --n-components 0.95 --out runs/score
    ocnna-fast prune    --arch resnet56 --k 40 --finetune-epochs 2 --out runs/r56-k40
    ocnna-fast finetune --arch resnet56 --epochs 2 --out runs/r56-jpeg
    ocnna-fast evaluate --arch resnet56 --pruned runs/r56-k40/pruned

    ocnna-fast fetch    cifar10 resnet20

Commands read local data only (``--data-dir``/``$OCNNA_DATA_DIR``, the
checkout's ``data/``, the user cache, ``../shared/data``); only ``fetch``
downloads, and only what it is asked for.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from . import build_info
from ._version import __version__
from .distributed import init_from_env, is_main
from .outdir import locked, out_dir, publish, staged
from .scoring import score

DATASET_CHOICES = ["cifar10-jpeg", "cifar10", "cifar100", "imagenet-sample", "imagenet"]
LOSSLESS_20 = "cifar10-lossless-20"
DATASET_HELP = (
    "cifar10-jpeg (shipped, default), or cifar10 / cifar100: torchvision's lossless layout, "
    "e.g. after `ocnna-fast fetch cifar10`; imagenet-sample: the 1000-image ImageNet sample "
    "(ImageNet models; halves for scoring/training and evaluation); imagenet: an ImageNet-layout "
    "folder given as --data-dir (DIR/train/<wnid>/*.JPEG, DIR/val/<wnid>/*.JPEG)"
)
DATA_DIR_HELP = (
    "a folder searched first for data (default $OCNNA_DATA_DIR); then the checkout's data/, "
    "the user cache and ../shared/data"
)


def _n_components(text: str):
    if text.lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not 0 < value < 1:
            raise argparse.ArgumentTypeError(
                f"expected 'none', an int >= 1 or a ratio in (0, 1), got {text!r}"
            ) from None
        return value
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'none', an int >= 1 or a ratio in (0, 1), got {text!r}")
    return value


def _int_type(minimum: int, maximum: Optional[int] = None, what: str = "a whole number"):
    """An argparse type: an int in ``[minimum, maximum]``, refused with one line otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}")
        return value

    parse.__name__ = "int"
    return parse


def _float_type(low: float, high: float, *, low_open: bool = False, high_open: bool = False, what: str = "a number"):
    """An argparse type: a finite float within the bounds (NaN and infinity refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        ok = (
            math.isfinite(value)
            and (value > low if low_open else value >= low)
            and (value < high if high_open else value <= high)
        )
        if not ok:
            bounds = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"expected {what}, a finite number in {bounds}, got {text!r}")
        return value

    parse.__name__ = "float"
    return parse


COUNT = _int_type(1, what="a count")  # images, batch sizes: at least one
NONNEG = _int_type(0, what="a count")  # epochs, repeats, BatchNorm images: 0 turns the step off
SEED = _int_type(0, 2**31 - 1, what="a seed")  # seeds are offset and multiplied: keep them within 31 bits
PERCENTILE = _float_type(0, 100, high_open=True, what="a percentile")
LEARNING_RATE = _float_type(0, 10, low_open=True, what="a learning rate")
SIZE = _int_type(1, 4096, what="an input size in pixels")


def _device(text: str) -> str:
    """An argparse type: a device that exists here (cpu, or a usable GPU)."""
    from .placement import usable_device

    try:
        return str(usable_device(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# a coefficient of variation over one image is 0 for every filter: scoring needs two
SCORE_IMAGES = _int_type(2, what="a number of images (scores vary over images: at least 2)")


def _dataset_name(text: str) -> str:
    return {"cifar10-jpeg-test": "cifar10-jpeg"}.get(text, text)  # the name before 0.1 had --dataset everywhere


def _num_classes(dataset: str, data_dir: Optional[str] = None) -> int:
    """Classes of a data set; for an image folder, its class folders (so a
    folder with a subset of ImageNet's classes is refused by a 1000-class
    model instead of being scored against shifted labels)."""
    from .data import DATASETS, FOLDER_DATASETS

    if dataset in FOLDER_DATASETS and data_dir:
        from .imagefolder import folder_classes

        return len(folder_classes(data_dir))
    return DATASETS[dataset][0] if dataset in DATASETS else 10


def _describe(dataset: str) -> str:
    from .data import DATASETS

    return DATASETS[dataset][1] if dataset in DATASETS else dataset


def _load_model(
    arch: str,
    weights: Optional[str],
    data_dir: Optional[str],
    dataset: str = "cifar10-jpeg",
    input_size: Optional[int] = None,
):
    from .data import PRETRAINED, pretrained_weights
    from .models import ARCHS, build, is_factory, load_weights

    if is_factory(arch):
        return _load_user_model(arch, weights, dataset, input_size, _num_classes(dataset, data_dir))
    if arch not in ARCHS:
        raise SystemExit(f"error: unknown --arch {arch!r}; choose from {', '.join(ARCHS)}")
    classes = _num_classes(dataset, data_dir)
    model = build(arch, num_classes=classes)
    if weights:
        path = Path(weights)
    elif arch in PRETRAINED and classes == 10:
        path = pretrained_weights(arch, data_dir)
    elif arch == "efficientnet_lite0_imagenet":
        from .models import lite0_weights_path

        path = Path(lite0_weights_path())
    elif arch in PRETRAINED:
        raise SystemExit(
            f"error: the shipped {arch} weights are for CIFAR-10; for --dataset {dataset} "
            f"({classes} classes) pass --weights FILE"
        )
    else:
        hint = (
            " (convert a TFLite file with `ocnna-fast convert-tflite`)" if arch.endswith(("_imagenet", "_tf2")) else ""
        )
        raise SystemExit(f"error: no weights ship for --arch {arch}; pass --weights FILE{hint}")
    load_weights(model, path)
    return model.eval(), str(path)


def _load_user_model(spec: str, weights: Optional[str], dataset: str, input_size: Optional[int], classes: int):
    """``--model module:factory`` with ``--weights`` (or the factory's own
    parameters), checked to predict the data set's number of classes."""
    from .models import build, load_weights

    model = build(spec)
    if weights:
        load_weights(model, weights)
    else:
        print(f"--model {spec} without --weights: using the parameters the factory returned")
    size = input_size or _default_size(dataset)
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, 3, size, size))
    except Exception as exc:
        raise ValueError(f"--model {spec} fails on a {size}x{size} input (set --input-size?): {exc}") from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"--model {spec} returns {shape} for one image; --dataset {dataset} needs logits (1, {classes})"
        )
    return model, weights or f"{spec} (factory parameters)"


def _default_size(dataset: str) -> int:
    return 224 if dataset.startswith("imagenet") else 32


def cmd_score(args: argparse.Namespace) -> int:
    if args.images < 1:
        raise SystemExit("error: --images must be >= 1")
    model, weights = _load_model(args.arch, args.weights, args.data_dir, args.dataset, args.input_size)
    if args.dataset == LOSSLESS_20:
        from .data import foolbox_samples
        from .distill import TensorImages

        x, y = foolbox_samples("cifar10", args.data_dir)
        _, mean, std, _ = _input_spec(args)
        data = TensorImages(x[: args.images], y[: args.images], mean, std)
    else:
        _check_data_fits(args)
        data = _images(args, "test", args.images, False, 0)
    batches = (x for x, _ in data.batches(args.batch_size))
    t = time.perf_counter()
    scores = score(model, batches, n_components=args.n_components, device=args.device, progress=not args.no_progress)
    seconds = time.perf_counter() - t
    out = out_dir(args.out)
    with locked(out):
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
        "dataset": _describe(args.dataset),
        "images": images,
        "n_components": args.n_components,
        "scoring_seconds": seconds,
        "images_per_second": images / seconds,
        "ocnna_fast": __version__,
        "torch": torch.__version__,
        "layers": layers,
    }
    from .atomic import write_text_atomic

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


def _input_spec(args: argparse.Namespace):
    """(input size, mean, std, crop fraction or None) the model expects: the
    zoo's for a zoo ``--arch``; for ``--model``, ``--input-size`` (default 32
    on CIFAR, 224 on ImageNet) and the data set's usual statistics.
    ``--input-size`` overrides a zoo model's size too."""
    from .data import IMAGENET_MEAN, IMAGENET_STD
    from .models import ARCHS, input_spec, is_factory
    from .models.cifar_resnet import CIFAR_MEAN, CIFAR_STD

    arch, dataset, override = args.arch, args.dataset, getattr(args, "input_size", None)
    if override is not None and override < 1:
        raise SystemExit(f"error: --input-size must be >= 1, got {override}")
    if is_factory(arch):
        stats = (IMAGENET_MEAN, IMAGENET_STD) if dataset.startswith("imagenet") else (CIFAR_MEAN, CIFAR_STD)
        return (override or _default_size(dataset), *stats, None)
    if arch not in ARCHS:
        raise SystemExit(f"error: unknown --arch {arch!r}; choose from {', '.join(ARCHS)}")
    size, mean, std, crop = input_spec(arch)
    return override or size, mean, std, crop


def _check_data_fits(args: argparse.Namespace) -> int:
    """The model's input size, after checking that --dataset has images of that size."""
    from .models import is_factory

    size = _input_spec(args)[0]
    imagenet = args.dataset.startswith("imagenet")
    if not is_factory(args.arch) and imagenet != (size != 32):
        why = (
            "the ImageNet data sets are for ImageNet models"
            if imagenet
            else "the CIFAR data sets are 32px; use --dataset imagenet-sample or imagenet"
        )
        raise SystemExit(
            f"error: --arch {args.arch} takes {size}px inputs; --dataset {args.dataset} does not fit it ({why})"
        )
    return size


def _images(args: argparse.Namespace, split: str, n: Optional[int], augment: bool, seed: int):
    """A split of ``--dataset`` as ``TensorImages``, or ``FolderImages`` for an
    image folder (seeded, class-balanced when ``n`` is set), sized and
    normalised for the model."""
    from .data import FOLDER_DATASETS, load_split
    from .distill import TensorImages

    size, mean, std, crop = _input_spec(args)
    if args.dataset in FOLDER_DATASETS:
        from .imagefolder import folder_split

        if not args.data_dir:
            raise SystemExit(
                f"error: --dataset {args.dataset} reads the folder given as --data-dir DIR "
                "(DIR/train/<wnid>/*.JPEG, DIR/val/<wnid>/*.JPEG)"
            )
        return folder_split(
            args.data_dir,
            split,
            size,
            mean,
            std,
            crop,
            augment=augment,
            workers=getattr(args, "workers", 0),
            limit=n,
            seed=seed,
        )
    x, y = load_split(args.dataset, split, args.data_dir, limit=n, seed=seed, size=size, crop_fraction=crop)
    return TensorImages(x, y, mean, std, augment=augment)


def _ignored(model, scope: str):
    """The layers --scope leaves whole: for the CIFAR ResNets, ``inner`` keeps
    the stage widths (only each block's inner conv is pruned)."""
    hook = getattr(model, "ocnna_ignored_layers", None)
    return list(hook(scope)) if callable(hook) else []


def _macs_params(model, size: int):
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, size, size))
    return int(macs), int(params)


def _write_report(out: Path, report: dict, title: str) -> None:
    from .atomic import write_text_atomic

    write_text_atomic(out / "report.json", json.dumps(report, indent=2))
    rows = "\n".join(
        f"| {k} | {v if not isinstance(v, float) else round(v, 4)} |"
        for k, v in report.items()
        if not isinstance(v, (dict, list))
    )
    md = f"# {title}\n\n| metric | value |\n| --- | --- |\n{rows}\n"
    if isinstance(report.get("latency"), dict):
        from .export import latency_markdown

        md += "\n" + latency_markdown(report["latency"])
    write_text_atomic(out / "report.md", md)


def _writer_lock(out: Path):
    """The --out lock, held by the process that writes: under torchrun every
    rank runs the command and rank 0 alone writes."""
    return locked(out) if is_main() else contextlib.nullcontext(out)


def cmd_prune(args: argparse.Namespace) -> int:
    if not 0 <= args.k < 100:
        raise SystemExit(f"error: --k is a percentile in [0, 100), got {args.k}")
    if args.bn_images < 0:
        raise SystemExit(f"error: --bn-images must be >= 0, got {args.bn_images}")
    size = _check_data_fits(args)
    model, weights = _load_model(args.arch, args.weights, args.data_dir, args.dataset, size)
    torch.manual_seed(args.seed)
    out = out_dir(args.out)
    with _writer_lock(out), staged(out) as stage:
        return _prune_into(args, model, weights, size, out, stage)


def _prune_into(args: argparse.Namespace, model, weights: str, size: int, out: Path, stage: Path) -> int:
    from .compensation import recalibrate
    from .distill import distill, evaluate, state_sha256
    from .pruning import count_params, prune, save_pruned

    progress = not args.no_progress
    evalset = _images(args, "test", args.eval_images, False, args.seed)
    scoreset = _images(args, "train", args.score_images, False, args.seed + 1)
    base_acc = evaluate(model, evalset)
    print(f"base accuracy {base_acc:.2f}% on {len(evalset)} {args.dataset} test images")
    t = time.perf_counter()
    scores = score(
        model, (x for x, _ in scoreset.batches(args.batch_size)), n_components=args.n_components, progress=progress
    )
    scoring_seconds = time.perf_counter() - t
    scores.save(stage / "scores.safetensors")
    pruned, plan = prune(
        model,
        scores,
        args.k,
        torch.zeros(1, 3, size, size),
        criterion=args.criterion,
        ignored_layers=_ignored(model, args.scope),
    )
    surgery_acc = evaluate(pruned, evalset)
    print(
        f"pruned at k={args.k}: {count_params(pruned)}/{count_params(model)} parameters, "
        f"accuracy right after surgery {surgery_acc:.2f}%"
    )
    bn_images, recal = 0, None
    if args.bn_images > 0:
        bnset = _images(args, "train", args.bn_images, False, args.seed + 3)
        recal = recalibrate(pruned, model, plan, (x for x, _ in bnset.batches(args.batch_size)), progress=progress)
        bn_images = recal["images"]
    before = evaluate(pruned, evalset) if bn_images else surgery_acc
    if recal and recal["method"] == "batchnorm":
        print(f"BatchNorm statistics re-estimated on {bn_images} training images: accuracy {before:.2f}%")
    elif recal:
        print(
            f"{args.arch} has its BatchNorm folded into its convs, so there are no statistics to re-estimate; "
            f"instead the removed channels' mean contributions went into {recal['compensated']} layers' biases "
            f"(measured on {bn_images} training images): accuracy {before:.2f}%"
        )
    t = time.perf_counter()
    history = []
    if args.finetune_epochs > 0:
        trainset = _images(args, "train", args.train_images, True, args.seed + 2)
        history = distill(
            pruned,
            model,
            trainset,
            epochs=args.finetune_epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            checkpoint_dir=out / "distill",
            progress=progress,
        )
    finetune_seconds = time.perf_counter() - t
    after = evaluate(pruned, evalset)
    base_macs, base_params = _macs_params(model, size)
    pr_macs, pr_params = _macs_params(pruned, size)
    save_pruned(
        stage / "pruned",
        pruned,
        plan,
        extra={
            "arch": args.arch,
            "num_classes": _num_classes(args.dataset, args.data_dir),
            "dataset": args.dataset,
            "input_size": size,
        },
    )
    report = {
        "arch": args.arch,
        "dataset": _describe(args.dataset),
        "base_weights": weights,
        "k": args.k,
        "scope": args.scope,
        "n_components": args.n_components,
        "criterion": args.criterion,
        "score_images": len(scoreset),
        "eval_images": len(evalset),
        "base_accuracy": base_acc,
        "pruned_accuracy_after_surgery": surgery_acc,
        "bn_images": bn_images,
        "recalibration": recal["method"] if recal else None,
        "pruned_accuracy_before_finetune": before,
        "pruned_accuracy": after,
        "accuracy_drop": base_acc - after,
        "base_params": base_params,
        "pruned_params": pr_params,
        "rpr": pr_params / base_params,
        "base_macs": base_macs,
        "pruned_macs": pr_macs,
        "macs_ratio": pr_macs / base_macs,
        "scoring_seconds": scoring_seconds,
        "finetune_epochs": args.finetune_epochs,
        "finetune_seconds": finetune_seconds,
        "distill_history": history,
        "pruned_weights_sha256": state_sha256(pruned),
    }
    if not is_main():  # under torchrun rank 0 alone measures and writes
        return 0
    if args.latency_repeats > 0:
        from . import export as ex

        report["latency"] = ex.compare_latency(model, pruned, size, args.latency_repeats, stage / ".latency")
        _print_latency(report["latency"])
    _write_report(stage, report, f"OCNNA: {args.arch}, k={args.k}")
    publish(stage, out, ["scores.safetensors", "pruned", "report.json", "report.md"])
    print(
        f"accuracy {base_acc:.2f}% -> {before:.2f}% (pruned) -> {after:.2f}% "
        f"(after {args.finetune_epochs} epochs of distillation); RPR {report['rpr']:.4f}, "
        f"MACs ratio {report['macs_ratio']:.4f}"
    )
    print(f"wrote {out / 'report.json'}, {out / 'report.md'} and {out / 'pruned'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import check_cells

    check_cells(args.criteria, args.k, args.seeds)  # before anything loads: repeated cells are refused
    size = _check_data_fits(args)
    model, weights = _load_model(args.arch, args.weights, args.data_dir, args.dataset, size)
    out = out_dir(args.out)
    score_set = _images(args, "train", args.score_images, False, args.seed + 1)
    bn_set = _images(args, "train", args.bn_images, False, args.seed + 3) if args.bn_images else None
    train_set = _images(args, "train", args.train_images, True, args.seed + 2) if args.finetune_epochs else None
    eval_set = _images(args, "test", args.eval_images, False, args.seed)
    with locked(out):
        rows = _run_suite(args, model, size, out, score_set, bn_set, train_set, eval_set)
    print(f"{len(rows)} cells; wrote {out / 'results.json'}, {out / 'results.md'} and plots (weights {weights})")
    return 0


def _run_suite(args: argparse.Namespace, model, size: int, out: Path, score_set, bn_set, train_set, eval_set):
    from .bench import run_suite

    return run_suite(
        model,
        arch=args.arch,
        score_set=score_set,
        bn_set=bn_set,
        train_set=train_set,
        eval_set=eval_set,
        criteria=args.criteria,
        ks=args.k,
        seeds=args.seeds,
        out=out,
        finetune_epochs=args.finetune_epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        latency_repeats=args.latency_repeats,
        progress=not args.no_progress,
        dataset=args.dataset,
        ignored_layers=_ignored(model, args.scope),
        scope=args.scope,
        input_size=size,
        data_seed=args.seed,
    )


def cmd_finetune(args: argparse.Namespace) -> int:
    size = _check_data_fits(args)
    model, weights = _load_model(args.arch, args.weights, args.data_dir, args.dataset, size)
    out = out_dir(args.out)
    with _writer_lock(out):
        return _finetune_into(args, model, weights, out)


def _finetune_into(args: argparse.Namespace, model, weights: str, out: Path) -> int:
    from safetensors.torch import save_file

    from .distill import evaluate, finetune

    evalset = _images(args, "test", args.eval_images, False, args.seed)
    trainset = _images(args, "train", args.train_images, True, args.seed + 2)
    before = evaluate(model, evalset)
    t = time.perf_counter()
    history = finetune(
        model,
        trainset,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        checkpoint_dir=out / "finetune",
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - t
    after = evaluate(model, evalset)
    if not is_main():
        return 0
    from .atomic import atomic_path

    with atomic_path(out / "model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    report = {
        "arch": args.arch,
        "dataset": _describe(args.dataset),
        "base_weights": weights,
        "epochs": args.epochs,
        "accuracy_before": before,
        "accuracy_after": after,
        "eval_images": len(evalset),
        "train_images": len(trainset),
        "finetune_seconds": seconds,
        "history": history,
        "weights_out": str(out / "model.safetensors"),
    }
    _write_report(out, report, f"Fine-tuning {args.arch} on {args.dataset}")
    print(f"accuracy {before:.2f}% -> {after:.2f}% after {args.epochs} epochs; wrote {out / 'model.safetensors'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .distill import evaluate

    if args.pruned:
        model, spec = _load_pruned(args)
        what = args.pruned
        args.arch = spec.get("arch", args.arch)
        args.input_size = spec.get("input_size", args.input_size)
        size = _input_spec(args)[0]
        with torch.no_grad():
            classes = model.eval()(torch.zeros(1, 3, size, size)).shape[-1]
        if classes != _num_classes(args.dataset, args.data_dir):
            raise ValueError(
                f"{args.pruned} predicts {classes} classes but --dataset {args.dataset} has "
                f"{_num_classes(args.dataset, args.data_dir)}; pass the data set it was pruned on"
            )
    else:
        model, what = _load_model(args.arch, args.weights, args.data_dir, args.dataset, args.input_size)
    if args.dataset == LOSSLESS_20:
        from .data import foolbox_samples
        from .distill import TensorImages
        from .models.cifar_resnet import CIFAR_MEAN, CIFAR_STD

        x, y = foolbox_samples("cifar10", args.data_dir)
        data = TensorImages(x, y, CIFAR_MEAN, CIFAR_STD)
    else:
        data = _images(args, "test", args.eval_images, False, args.seed)
    acc = evaluate(model, data, progress=not args.no_progress)
    print(json.dumps({"model": what, "dataset": _describe(args.dataset), "images": len(data), "accuracy": acc}))
    return 0


def _load_pruned(args: argparse.Namespace):
    """``(model, the plan's model entry)`` of ``--pruned``.  A folder pruned
    from a user's ``module:factory`` is rebuilt only with ``--model`` given
    explicitly and equal to what the plan recorded: a file never chooses the
    code that runs."""
    from .models import build, is_factory
    from .pruning import load_pruned, read_plan

    spec = read_plan(args.pruned).get("model") or {}
    arch = spec.get("arch", "?")
    base = None
    if is_factory(arch):
        given = getattr(args, "model", None)
        if given is None:
            raise ValueError(
                f"{args.pruned} was pruned from the user model {arch}; loading a folder never runs code it "
                f"names: pass --model {arch} to rebuild it"
            )
        if given != arch:
            raise ValueError(f"--model {given} is not the model {args.pruned} was pruned from ({arch})")
        base = build(arch)
    return load_pruned(args.pruned, base), spec


def _base_file(out: Path) -> Path:
    return out.with_name(f"{out.stem}.base{out.suffix}")


def cmd_export(args: argparse.Namespace) -> int:
    from . import export as ex
    from .models import input_size

    if args.format == "onnx" or args.benchmark:
        ex.require_deploy()
    if args.batch is not None and args.batch < 1:
        raise SystemExit(f"error: --batch must be >= 1, got {args.batch}")
    if args.verify_images < 1:
        raise SystemExit(f"error: --verify-images must be >= 1, got {args.verify_images}")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name the file to write (e.g. {out / 'model.onnx'})")
    pruned, spec = _load_pruned(args)
    arch = spec.get("arch", "?")
    args.arch = arch
    if args.dataset is None:
        args.dataset = spec.get("dataset", "cifar10-jpeg")
    args.input_size = spec.get("input_size")
    size = args.input_size or (input_size(arch) if arch != "?" else 32)
    models = {"pruned": (pruned, out)}
    if args.base or args.benchmark:
        base, _ = _load_model(arch, args.weights, args.data_dir, args.dataset, size)
        models["base"] = (base, _base_file(out))
    x = _images(args, "test", args.verify_images, False, args.seed).batches(256)
    images = torch.cat([b for b, _ in x])
    report = {
        "pruned": args.pruned,
        "arch": arch,
        "dataset": _describe(args.dataset),
        "format": args.format,
        "torch": torch.__version__,
    }
    # every file is verified before any replaces what is at --out (and its .base twin)
    report.update(ex.export_verified(models, args.format, images, size, args.batch))
    for name, (model, path) in models.items():
        info = report[name]
        check = ex.Verification(**info["verification"])
        print(
            f"{name}: wrote {path} ({info['bytes'] / 1e6:.2f} MB, {args.format}"
            f"{', opset ' + str(info['opset']) if 'opset' in info else ''}, batch "
            f"{args.batch or 'dynamic'}); on {check.images} {args.dataset} test images: max |logit diff| "
            f"{check.max_abs_diff:.2e} (tolerance {check.tolerance:.1e}), top-1 agreement {check.top1_agreement:.2%}"
        )
    if args.benchmark:
        report["latency"] = ex.compare_latency(
            models["base"][0], pruned, size, args.latency_repeats, out.parent / f".{out.stem}-latency"
        )
        _print_latency(report["latency"])
    from .atomic import write_text_atomic

    report_path = out.with_name(f"{out.name}.json")
    write_text_atomic(report_path, json.dumps(report, indent=2))
    print(f"wrote {report_path}")
    return 0


def _print_latency(section: dict) -> None:
    threads = section["pruned"]["threads"]
    print(f"latency on this CPU ({threads} threads; median ms, base -> pruned, speed-up):")
    for key, ratio in section.get("speedup", {}).items():
        print(
            f"  {key:<18} {section['base'][key]['median']:9.2f} -> {section['pruned'][key]['median']:9.2f}"
            f"   x{ratio:.2f}"
        )
    if "onnxruntime" in section:
        print(f"  ONNX Runtime {section['onnxruntime']}")


def cmd_convert_tflite(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from .atomic import atomic_path
    from .fetch import sha256_of
    from .models import build
    from .tflite_convert import convert_tflite, detect_arch

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(
            f"--out {out}: convert-tflite writes safetensors, and --weights reads a file by its "
            "suffix: name it NAME.safetensors"
        )
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    if not Path(args.file).is_file():
        raise ValueError(f"{args.file} is not a file")
    arch = args.arch or detect_arch(args.file)
    model = build(arch, num_classes=1000)
    state = convert_tflite(args.file, model)
    with atomic_path(out) as tmp:
        save_file(
            {k: v.contiguous() for k, v in state.items()},
            tmp,
            metadata={"arch": arch, "source": Path(args.file).name, "source_sha256": sha256_of(args.file)},
        )
    print(
        f"{args.file} -> {out} ({arch}, {sum(v.numel() for v in state.values())} values); use it with "
        f"--arch {arch} --weights {out}"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .datapaths import data_places

    print(json.dumps({**build_info(), "data_places": [str(p) for p in data_places()]}, indent=2))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from .fetch import REMOTES, fetch

    if args.list or not args.names:
        for name, r in REMOTES.items():
            print(f"{name:<10} {r.size / 1e6:7.1f} MB  {r.url}")
        if not args.names:
            print("usage: ocnna-fast fetch NAME [NAME ...]  (downloads into the user cache, or --data-dir)")
        return 0
    for name in args.names:
        path = fetch(name, args.data_dir, base_url=args.base_url, progress=not args.no_progress)
        print(f"{name}: {path}")
    return 0


WORKERS_HELP = "DataLoader worker processes decoding images of --dataset imagenet (default: min(4, CPUs))"


def _workers(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"--workers must be >= 0, got {n}")
    return n


def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def _model_options(sp: argparse.ArgumentParser) -> None:
    """What every command that builds a model takes besides --arch."""
    sp.add_argument(
        "--model",
        default=None,
        metavar="MODULE:FACTORY",
        help="your own network instead of --arch: a callable taking no arguments that returns an "
        "nn.Module (e.g. mypkg.nets:build); its weights from --weights (safetensors or a "
        "torch state dict), or the factory's own",
    )
    sp.add_argument(
        "--input-size",
        type=SIZE,
        default=None,
        help="input side in pixels (default: the zoo model's; for --model 32 on CIFAR, 224 on ImageNet)",
    )
    sp.add_argument("--workers", type=_workers, default=_default_workers(), help=WORKERS_HELP)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ocnna-fast", description="Fast, exact OCNNA filter scoring for PyTorch CNNs")
    p.add_argument("--version", action="version", version=f"ocnna-fast {__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of expected errors too")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="score the filters of a pretrained model on shipped images")
    s.add_argument("--arch", default="resnet56", help="architecture (default resnet56)")
    s.add_argument("--weights", help="checkpoint file (default: the shipped one for --arch)")
    s.add_argument(
        "--dataset",
        default="cifar10-jpeg",
        type=_dataset_name,
        choices=[*DATASET_CHOICES, LOSSLESS_20],
        help=DATASET_HELP + f"; {LOSSLESS_20}: the 20 shipped lossless test images",
    )
    s.add_argument("--images", type=SCORE_IMAGES, default=1000, help="images to score on (class-balanced subset)")
    s.add_argument(
        "--n-components",
        type=_n_components,
        default=None,
        help="PCA components per map: none (default), an int, or a ratio in (0, 1)",
    )
    s.add_argument("--batch-size", type=COUNT, default=128)
    s.add_argument("--device", type=_device, default=None, help="cpu or cuda (default: cpu)")
    s.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    s.add_argument("--out", default="runs/score", help="output folder")
    _model_options(s)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_score)

    def common(sp, datasets=DATASET_CHOICES):
        sp.add_argument("--arch", default="resnet56", help="architecture (default resnet56)")
        sp.add_argument("--weights", help="weights file (.th or .safetensors); default: the shipped one for --arch")
        sp.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
        sp.add_argument(
            "--dataset",
            default="cifar10-jpeg",
            type=_dataset_name,
            choices=datasets,
            help=DATASET_HELP
            + (f"; {LOSSLESS_20}: the 20 shipped lossless test images" if LOSSLESS_20 in datasets else ""),
        )
        sp.add_argument("--batch-size", type=COUNT, default=128)
        sp.add_argument(
            "--scope",
            default="full",
            choices=["full", "inner"],
            help="CIFAR ResNets: full (default) prunes stage widths too; inner prunes only each "
            "block's inner conv (the setting of HRank and CHIP on ResNet-56)",
        )
        sp.add_argument("--seed", type=SEED, default=0)
        sp.add_argument("--no-progress", action="store_true")
        _model_options(sp)

    pr = sub.add_parser("prune", help="score, prune, distill and report (the whole OCNNA job)")
    common(pr)
    pr.add_argument("--k", type=PERCENTILE, default=40.0, help="percentile of filters removed per group (default 40)")
    pr.add_argument(
        "--n-components",
        type=_n_components,
        default=None,
        help="PCA components per map: none (default: all), an int, or a ratio in (0, 1) of explained variance",
    )
    pr.add_argument(
        "--criterion",
        default="ocnna",
        choices=["ocnna", "mean-energy", "ocnna-rms"],
        help="which streamed statistic ranks the filters: ocnna (the paper's std/mean, default), "
        "mean-energy or ocnna-rms (see docs/scoring.md and BENCHMARKS.md)",
    )
    pr.add_argument("--score-images", type=SCORE_IMAGES, default=1000, help="training images used for scoring")
    pr.add_argument("--eval-images", type=COUNT, default=None, help="test images for accuracy (default all 10000)")
    pr.add_argument("--train-images", type=COUNT, default=None, help="training images for distillation (default all)")
    pr.add_argument(
        "--finetune-epochs", type=NONNEG, default=2, help="epochs of distillation from the base model (0: none)"
    )
    pr.add_argument(
        "--bn-images",
        type=NONNEG,
        default=1000,
        help="re-estimate BatchNorm statistics of the pruned model on this many training images "
        "before evaluating and distilling it (default 1000; 0: off); for a model whose "
        "BatchNorm is folded into its convs, compensate the removed channels' mean "
        "contributions in the next layers' biases instead",
    )
    pr.add_argument("--lr", type=LEARNING_RATE, default=0.01, help="distillation learning rate (SGD, cosine)")
    pr.add_argument(
        "--latency-repeats",
        type=NONNEG,
        default=10,
        help="timed passes per latency figure of the report (base vs pruned, PyTorch eager and, with "
        "the deploy extra, ONNX Runtime; batch 1 and 64); 0: no latency section",
    )
    pr.add_argument("--out", default="runs/prune")
    pr.set_defaults(func=cmd_prune)

    from .criteria import CRITERIA

    be = sub.add_parser("bench", help="compare pruning criteria at identical structure (results.json/md, plots)")
    common(be)
    be.add_argument(
        "--k", type=PERCENTILE, nargs="+", default=[20.0, 40.0, 60.0], help="percentiles (default 20 40 60)"
    )
    be.add_argument(
        "--criteria",
        nargs="+",
        default=list(CRITERIA),
        choices=list(CRITERIA),
        metavar="NAME",
        help=f"criteria to compare (default all: {' '.join(CRITERIA)})",
    )
    be.add_argument(
        "--seeds",
        type=SEED,
        nargs="+",
        default=[0, 1, 2],
        help="seeds: for random, and for fine-tuning (default 0 1 2)",
    )
    be.add_argument("--score-images", type=SCORE_IMAGES, default=1000, help="training images criteria are computed on")
    be.add_argument(
        "--bn-images",
        type=NONNEG,
        default=1000,
        help="training images for BatchNorm re-estimation after surgery (0: skip)",
    )
    be.add_argument("--finetune-epochs", type=NONNEG, default=0, help="distillation epochs per cell (default 0)")
    be.add_argument("--train-images", type=COUNT, default=None, help="training images for fine-tuning (default all)")
    be.add_argument("--eval-images", type=COUNT, default=None, help="test images for accuracy (default all 10000)")
    be.add_argument("--lr", type=LEARNING_RATE, default=0.01)
    be.add_argument("--latency-repeats", type=NONNEG, default=10, help="timed forward passes per latency figure")
    be.add_argument("--out", default="runs/bench")
    be.set_defaults(func=cmd_bench)

    ft = sub.add_parser("finetune", help="adapt a model to the shipped JPEG CIFAR-10 (cross-entropy)")
    common(ft)
    ft.add_argument("--epochs", type=NONNEG, default=2)
    ft.add_argument("--lr", type=LEARNING_RATE, default=0.01)
    ft.add_argument("--eval-images", type=COUNT, default=None)
    ft.add_argument("--train-images", type=COUNT, default=None)
    ft.add_argument("--out", default="runs/finetune")
    ft.set_defaults(func=cmd_finetune)

    ev = sub.add_parser("evaluate", help="top-1 accuracy of a model or a pruned model directory")
    common(ev, [*DATASET_CHOICES, LOSSLESS_20])
    ev.add_argument("--pruned", help="a directory written by 'prune' (its pruned/ folder)")
    ev.add_argument("--eval-images", type=COUNT, default=None)
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser("export", help="export a pruned model to ONNX or TorchScript, verify it, measure latency")
    ex.add_argument("--pruned", required=True, help="a pruned/ folder written by 'prune'")
    ex.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    ex.add_argument("--out", required=True, help="the file to write (with --base, the original goes to NAME.base.EXT)")
    ex.add_argument("--base", action="store_true", help="also export the unpruned model it came from")
    ex.add_argument("--batch", type=COUNT, default=None, help="a fixed batch size (default: dynamic batch)")
    ex.add_argument(
        "--verify-images",
        type=COUNT,
        default=256,
        help="test images of the data set the model was pruned on, run in the exported file and in "
        "PyTorch and compared (default 256)",
    )
    ex.add_argument(
        "--benchmark",
        action="store_true",
        help="measure base vs pruned latency in ONNX Runtime and PyTorch eager, batch 1 and 64",
    )
    ex.add_argument("--latency-repeats", type=COUNT, default=20, help="timed passes per latency figure")
    ex.add_argument("--weights", help="the base model's weights (default: the shipped ones for the plan's arch)")
    ex.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    ex.add_argument(
        "--dataset",
        default=None,
        type=_dataset_name,
        choices=DATASET_CHOICES,
        help="data set for verification (default: the one the model was pruned on)",
    )
    ex.add_argument("--seed", type=SEED, default=0)
    ex.add_argument("--workers", type=_workers, default=_default_workers(), help=WORKERS_HELP)
    ex.add_argument(
        "--model",
        default=None,
        metavar="MODULE:FACTORY",
        help="the user model the folder was pruned from (required for such a folder: a file never "
        "chooses the code that runs)",
    )
    ex.set_defaults(func=cmd_export)

    cv = sub.add_parser("convert-tflite", help="convert a (quantized) TFLite MobileNet into float PyTorch weights")
    cv.add_argument("file", help="a .tflite file (the Coral MobileNet v1 and v2 files)")
    cv.add_argument("--out", required=True, help="the .safetensors file to write")
    cv.add_argument("--arch", default=None, help="zoo architecture (default: detected from the file)")
    cv.set_defaults(func=cmd_convert_tflite)

    fe = sub.add_parser("fetch", help="download CIFAR archives or pretrained checkpoints (checked by sha256)")
    from .fetch import REMOTES

    fe.add_argument("names", nargs="*", metavar="NAME", help=f"what to download: {', '.join(REMOTES)}")
    fe.add_argument("--list", action="store_true", help="list what can be fetched, with sizes and URLs")
    fe.add_argument("--data-dir", default=None, help="download here instead of the user cache")
    fe.add_argument(
        "--base-url",
        default=None,
        help="fetch the same file names from this folder URL instead (a mirror; $OCNNA_FETCH_BASE_URL)",
    )
    fe.add_argument("--no-progress", action="store_true")
    fe.set_defaults(func=cmd_fetch)

    i = sub.add_parser("info", help="print build information and where data is looked for")
    i.set_defaults(func=cmd_info)
    return p


def _maybe_distributed(args: argparse.Namespace) -> int:
    """Runs prune/finetune; launched by torchrun with several processes, their
    distillation trains with DistributedDataParallel (gloo on CPU), every rank
    scores and prunes identically, and rank 0 alone prints and writes."""
    rank, world = init_from_env()
    if world == 1:
        return args.func(args)
    args.no_progress = args.no_progress or rank != 0
    try:
        if rank != 0:
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                return args.func(args)
        print(f"torchrun: {world} processes; distillation in DistributedDataParallel, global batch {args.batch_size}")
        return args.func(args)
    finally:
        torch.distributed.destroy_process_group()


def _interrupted_note(args: argparse.Namespace) -> str:
    """What an interrupted command kept, and how to go on."""
    out = getattr(args, "out", None)
    return {
        cmd_prune: f"nothing in {out} changed; the same command resumes the distillation from its last finished epoch",
        cmd_bench: f"the cells finished so far are kept in {out}/results.json; the same command resumes from there",
        cmd_finetune: "the same command resumes the fine-tuning from its last finished epoch",
        cmd_fetch: "what was downloaded is kept as NAME.part; the same fetch resumes it",
    }.get(args.func, "no output was written or changed")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if getattr(args, "model", None):
        if ":" not in args.model:
            print(f"error: --model must be 'package.module:factory', got {args.model!r}", file=sys.stderr)
            return 2
        args.arch = args.model  # a module:factory spec goes wherever a zoo name does
    if getattr(args, "dataset", None) == "imagenet" and not getattr(args, "data_dir", None):
        print(
            "error: --dataset imagenet reads the folder given as --data-dir DIR "
            "(DIR/train/<wnid>/*.JPEG, DIR/val/<wnid>/*.JPEG)",
            file=sys.stderr,
        )
        return 2
    debug = getattr(args, "debug", False)
    try:
        if args.func in (cmd_prune, cmd_finetune):
            return _maybe_distributed(args)
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"interrupted: {_interrupted_note(args)}", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError) as exc:
        # expected failures (bad arguments, files, data): one line; anything
        # else (a bug, InternalError included) keeps its traceback
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
