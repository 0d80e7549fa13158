"""The options the commands share, defined once: argparse types with ranges
(no number is taken without one), and the groups of options for the model,
the data and a run."""

from __future__ import annotations

import argparse
import math
import os
from typing import Callable, Optional, Sequence

__all__ = [
    "COUNT",
    "NONNEG",
    "SEED",
    "PERCENTILE",
    "LEARNING_RATE",
    "SIZE",
    "SCORE_IMAGES",
    "DATASET_CHOICES",
    "LOSSLESS_20",
    "n_components",
    "device",
    "add_device_option",
    "add_model_options",
    "add_data_options",
    "add_run_options",
    "add_scope_option",
    "add_job_options",
    "add_threads_option",
    "group",
    "SHARE",
    "PART",
]

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
WORKERS_HELP = "DataLoader worker processes decoding images of --dataset imagenet (default: min(4, CPUs))"


def _int_type(minimum: int, maximum: Optional[int] = None, what: str = "a whole number") -> Callable[[str], int]:
    """An argparse type: an int in ``[minimum, maximum]``, refused with one line otherwise."""

    def parse(text: str) -> int:
        try:
            value: Optional[int] = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}")
        return value

    parse.__name__ = "int"
    return parse


def _float_type(
    low: float, high: float, *, low_open: bool = False, high_open: bool = False, what: str = "a number"
) -> Callable[[str], float]:
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
SHARE = _float_type(0, 1, low_open=True, high_open=True, what="a share")
PART = _float_type(0, 1, low_open=True, high_open=False, what="a share in (0, 1]")
SIZE = _int_type(1, 4096, what="an input size in pixels")
WORKERS = _int_type(0, what="a number of worker processes")
# a coefficient of variation over one image is 0 for every filter: scoring needs two
SCORE_IMAGES = _int_type(2, what="a number of images (scores vary over images: at least 2)")


def n_components(text: str):
    """An argparse type: ``none``, an int >= 1, or a ratio in (0, 1) of explained variance."""
    if text.lower() == "none":
        return None
    try:
        return _int_type(1)(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        return _float_type(0, 1, low_open=True, high_open=True)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'none', an int >= 1 or a ratio in (0, 1), got {text!r}") from None


def device(text: str) -> str:
    """An argparse type: a device that exists here (``auto``: a usable GPU, else the CPU)."""
    from .._util.placement import resolve_device

    try:
        return str(resolve_device(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_device_option(sp: argparse.ArgumentParser, what: str = "the whole job") -> None:
    """``--device``, the same on every command: where ``what`` runs."""
    sp.add_argument(
        "--device",
        type=device,
        default="auto",
        help=f"where {what} runs: auto (a usable GPU, else the CPU), cpu, cuda or cuda:N (default auto)",
    )


def _dataset_name(text: str) -> str:
    return {"cifar10-jpeg-test": "cifar10-jpeg"}.get(text, text)  # the name before 0.1 had --dataset everywhere


def _folded(text: str) -> str:
    if text == "regression":
        raise argparse.ArgumentTypeError("'regression' is now 'refit' (--folded-correction refit)")
    return text


DEFAULT_ARCH = "resnet56"


def group(sp: argparse.ArgumentParser, title: str) -> argparse._ArgumentGroup:
    """The ``--help`` section ``title`` of ``sp`` (made once, found again by title)."""
    for g in sp._action_groups:
        if g.title == title:
            return g
    return sp.add_argument_group(title)


def add_model_options(sp: argparse.ArgumentParser, *, arch: bool = True) -> None:
    """The model: a zoo ``--arch`` with ``--weights``, or the user's ``--model``."""
    sp = group(sp, "model")
    if arch:
        # unset by the parser, so a command can tell --arch given from the default (cli.main fills it in)
        sp.add_argument("--arch", default=None, help=f"architecture (default {DEFAULT_ARCH})")
        sp.set_defaults(default_arch=DEFAULT_ARCH)
        sp.add_argument(
            "--weights", help="weights file (.th, .pt or .safetensors); default: the shipped one for --arch"
        )
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


def add_data_options(
    sp: argparse.ArgumentParser, datasets: Sequence[str] = DATASET_CHOICES, default: Optional[str] = "cifar10-jpeg"
) -> None:
    """Where images come from: ``--dataset``, ``--data-dir``, ``--workers``."""
    sp = group(sp, "data")
    lossless = f"; {LOSSLESS_20}: the 20 shipped lossless test images" if LOSSLESS_20 in datasets else ""
    sp.add_argument(
        "--dataset",
        default=default,
        type=_dataset_name,
        choices=list(datasets),
        help=(DATASET_HELP + lossless) if default else "data set for verification (default: the one it was pruned on)",
    )
    sp.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    sp.add_argument("--workers", type=WORKERS, default=min(4, os.cpu_count() or 1), help=WORKERS_HELP)


def add_run_options(
    sp: argparse.ArgumentParser,
    *,
    batch: Optional[int] = 128,
    progress: bool = True,
    runs: str = "the whole job",
    precision: bool = False,
) -> None:
    """How a run goes: ``--device`` (where ``runs`` runs), ``--precision``
    (with ``precision``: of training and evaluation), ``--batch-size``
    (default ``batch``; ``None``: no such option), ``--seed`` (which images
    are drawn), ``--no-progress``."""
    sp = group(sp, "run")
    add_device_option(sp, runs)
    if precision:
        sp.add_argument(
            "--precision",
            choices=["auto", "fp32", "amp"],
            default="auto",
            help="training and evaluation: amp (autocast; bfloat16, or float16 with a gradient scaler) or fp32; "
            "auto (default): amp on a GPU, fp32 on the CPU. Scoring keeps its own precision",
        )
    if batch is not None:
        sp.add_argument("--batch-size", type=COUNT, default=batch, help=f"images per batch (default {batch})")
    sp.add_argument(
        "--seed",
        type=SEED,
        default=0,
        help="draws the image subsets, and where the command trains the training order (default 0)",
    )
    if progress:
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_scope_option(sp: argparse.ArgumentParser) -> None:
    """``--scope``, for the commands that prune."""
    sp = group(sp, "what to prune")
    sp.add_argument(
        "--scope",
        default=None,
        choices=["full", "inner"],
        help="CIFAR ResNets: full prunes stage widths too; inner prunes only each block's inner conv "
        "(the setting of HRank and CHIP on ResNet-56). Default: inner with --k (ResNet-56 after BatchNorm "
        "at equal MACs: 70.15%% against 48.65%% for full), full with --target and --paper",
    )


def add_job_options(sp: argparse.ArgumentParser, *, finetune_epochs: int) -> None:
    """The budget of a prune job (``prune``, and every cell of ``bench``):
    images for scoring, calibration, distillation and evaluation, the
    distillation epochs and rate, the latency repeats."""
    images, recovery, out = group(sp, "images"), group(sp, "recovery after surgery"), group(sp, "output")
    sp = images
    sp.add_argument("--score-images", type=SCORE_IMAGES, default=1000, help="training images scored (default 1000)")
    sp.add_argument(
        "--bn-images",
        type=NONNEG,
        default=1000,
        help="re-estimate BatchNorm statistics of the pruned model on this many training images "
        "before evaluating and distilling it (default 1000; 0: off); for a model whose "
        "BatchNorm is folded into its convs, correct the kept channels' statistics "
        "on them instead (--folded-correction)",
    )
    from ..recovery.recover import FOLDED

    sp = recovery
    sp.add_argument(
        "--folded-correction",
        type=_folded,
        choices=FOLDED,
        default="refit",
        help="for a model whose BatchNorm is folded into its convs: after the mean compensation (mean), "
        "re-estimate each kept channel's mean and spread (variance), and then refit every layer after "
        "the first cut by least squares to the base model's outputs (refit, default: one pass of "
        "the calibration images per layer)",
    )
    sp.add_argument(
        "--refit",
        action="store_true",
        help="for a model with BatchNorm: after re-estimating its statistics, refit every layer after the "
        "first cut by least squares to the base model's outputs on the same images (one pass of them per layer)",
    )
    sp.add_argument(
        "--finetune-epochs",
        type=NONNEG,
        default=finetune_epochs,
        help=f"epochs of distillation from the base model (default {finetune_epochs}; 0: none)",
    )
    images.add_argument(
        "--train-images", type=COUNT, default=None, help="training images for distillation (default all)"
    )
    images.add_argument("--eval-images", type=COUNT, default=None, help="test images for accuracy (default all)")
    sp.add_argument(
        "--lr", type=LEARNING_RATE, default=0.01, help="distillation learning rate (SGD, cosine; default 0.01)"
    )
    out.add_argument(
        "--latency-repeats",
        type=NONNEG,
        default=10,
        help="timed passes per latency figure (base vs pruned, PyTorch eager; prune also ONNX Runtime "
        "with the deploy extra; batch 1 and 64; default 10); 0: no latency",
    )


def add_threads_option(sp: argparse.ArgumentParser) -> None:
    """``--threads``: the CPU threads of the run (PyTorch and ONNX Runtime), latency figures included."""
    sp = group(sp, "run")
    sp.add_argument(
        "--threads",
        type=_int_type(1, 1024, what="a number of threads"),
        default=None,
        help="CPU threads for PyTorch and ONNX Runtime, latency figures included (default: torch's choice)",
    )
