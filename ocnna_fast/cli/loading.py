"""What the commands load from their options: the model (a zoo ``--arch``
with its weights, or the user's ``--model``), a pruned folder, and the
images of ``--dataset`` sized and normalised for the model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .options import LOSSLESS_20

__all__ = [
    "num_classes",
    "describe",
    "load_model",
    "load_pruned_folder",
    "input_spec",
    "check_data_fits",
    "images",
    "ignored_layers",
    "job_data",
]


def num_classes(dataset: str, data_dir: Optional[str] = None) -> int:
    """Classes of a data set; for an image folder, its class folders (so a
    folder with a subset of ImageNet's classes is refused by a 1000-class
    model instead of being scored against shifted labels)."""
    from ..data.local import DATASETS, FOLDER_DATASETS

    if dataset in FOLDER_DATASETS and data_dir:
        from ..data.imagefolder import folder_classes

        return len(folder_classes(data_dir))
    return DATASETS[dataset][0] if dataset in DATASETS else 10


def describe(dataset: str) -> str:
    """A data set's name as reports print it."""
    from ..data.local import DATASETS

    return DATASETS[dataset][1] if dataset in DATASETS else dataset


def load_model(
    arch: str,
    weights: Optional[str],
    data_dir: Optional[str],
    dataset: str = "cifar10-jpeg",
    input_size: Optional[int] = None,
    seed: int = 0,
) -> Tuple[nn.Module, str]:
    """``(model in eval mode, where its weights came from)``; a ``--model``
    factory without weights is built under ``seed`` (its parameters are the
    weights, so two runs must draw the same)."""
    from ..data.local import ADAPTED, PRETRAINED, adapted_weights, pretrained_weights
    from ..models import ARCHS, build, is_factory, load_weights

    if is_factory(arch):
        return _load_user_model(arch, weights, dataset, input_size, num_classes(dataset, data_dir), seed)
    if arch not in ARCHS:
        raise ValueError(f"unknown --arch {arch!r}; choose from {', '.join(ARCHS)}")
    classes = num_classes(dataset, data_dir)
    model = build(arch, num_classes=classes)
    if weights:
        path = Path(weights)
    elif arch in PRETRAINED and classes == 10:
        adapted = adapted_weights(arch, data_dir) if dataset == "cifar10-jpeg" else None
        if adapted is None and dataset == "cifar10-jpeg" and arch in ADAPTED:
            print(f"the JPEG-adapted {arch} is not found: starting from akamaster's, trained on lossless CIFAR-10")
        path = adapted or pretrained_weights(arch, data_dir)
    elif arch == "efficientnet_lite0_imagenet":
        from ..models import lite0_weights_path

        path = Path(lite0_weights_path())
    elif arch in TFLITE_FILES:
        path = _converted(arch, data_dir)
    elif arch in PRETRAINED:
        raise ValueError(
            f"the shipped {arch} weights are for CIFAR-10; for --dataset {dataset} "
            f"({classes} classes) pass --weights FILE"
        )
    else:
        hint = (
            " (convert a TFLite file with `ocnna-fast convert-tflite`)" if arch.endswith(("_imagenet", "_tf2")) else ""
        )
        raise ValueError(f"no weights ship for --arch {arch}; pass --weights FILE{hint}")
    load_weights(model, path)
    return model.eval(), str(path)


# the Coral TFLite file each TensorFlow MobileNet of the zoo is converted from
TFLITE_FILES = {
    "mobilenet_v1_025_imagenet": "mobilenet_v1_0.25_128_quant.tflite",
    "mobilenet_v1_050_imagenet": "mobilenet_v1_0.5_160_quant.tflite",
    "mobilenet_v1_075_imagenet": "mobilenet_v1_0.75_192_quant.tflite",
    "mobilenet_v2_100_imagenet": "mobilenet_v2_1.0_224_quant.tflite",
    "mobilenet_v2_100_imagenet_tf2": "tf2_mobilenet_v2_1.0_224_ptq.tflite",
}


def _converted(arch: str, data_dir: Optional[str]) -> Path:
    """The float weights of a zoo TensorFlow MobileNet: converted from its
    Coral TFLite file in a data place on first use, into the user cache."""
    from ..data.places import cache_dir, find_data

    out = cache_dir() / "converted" / f"{arch}.safetensors"
    if out.is_file():
        return out
    try:
        source = find_data(f"mobilenet-imagenet-tflite-coral/{TFLITE_FILES[arch]}", data_dir)
    except FileNotFoundError as exc:
        raise ValueError(
            f"no weights for --arch {arch}: {exc}; or pass --weights FILE from `ocnna-fast convert-tflite`"
        ) from None
    from .._util.atomic import save_tensors
    from ..models import build
    from ..models.tflite_convert import convert_tflite

    print(f"converting {source} into {out} (once; later runs load it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    state = convert_tflite(source, build(arch, num_classes=1000))
    save_tensors(state, out, metadata={"arch": arch, "source": source.name})
    return out


def _load_user_model(
    spec: str, weights: Optional[str], dataset: str, input_size: Optional[int], classes: int, seed: int = 0
):
    """``--model module:factory`` with ``--weights`` (or the factory's own
    parameters), checked to predict the data set's number of classes."""
    from ..models import build, load_weights

    size = input_size or _default_size(dataset)
    # seeded here (lazy modules draw at the first call too), the caller's random stream untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(spec)
        if weights:
            load_weights(model, weights)
        else:
            print(f"--model {spec} without --weights: using the parameters the factory returned")
        try:
            with torch.no_grad():
                out = model.eval()(torch.zeros(1, 3, size, size))
        except Exception as exc:
            raise ValueError(f"--model {spec} fails on a {size}x{size} input (set --input-size?): {exc}") from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        hint = "" if "(" in spec else f": build it for {classes} classes, e.g. --model '{spec}(num_classes={classes})'"
        raise ValueError(
            f"--model {spec} returns {shape} for one image; --dataset {dataset} needs logits (1, {classes}){hint}"
        )
    return model, weights or f"{spec} (factory parameters)"


def _default_size(dataset: str) -> int:
    return 224 if dataset.startswith("imagenet") else 32


def load_pruned_folder(args: argparse.Namespace) -> Tuple[nn.Module, Dict[str, Any]]:
    """``(model, the plan's model entry)`` of ``--pruned``.  A folder pruned
    from a user's ``module:factory`` is rebuilt only with ``--model`` given
    explicitly and equal to what the plan recorded: a file never chooses the
    code that runs."""
    from ..models import build, is_factory
    from ..surgery.plans import load_pruned, read_plan

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


def input_spec(args: argparse.Namespace):
    """(input size, mean, std, crop fraction or None) the model expects: the
    zoo's for a zoo ``--arch``; for ``--model``, ``--input-size`` (default 32
    on CIFAR, 224 on ImageNet) and the data set's usual statistics.
    ``--input-size`` overrides a zoo model's size too."""
    from ..data.local import IMAGENET_MEAN, IMAGENET_STD
    from ..models import ARCHS, is_factory
    from ..models import input_spec as zoo_spec
    from ..models.cifar_resnet import CIFAR_MEAN, CIFAR_STD

    arch, dataset, override = args.arch, args.dataset, getattr(args, "input_size", None)
    if is_factory(arch):
        stats = (IMAGENET_MEAN, IMAGENET_STD) if dataset.startswith("imagenet") else (CIFAR_MEAN, CIFAR_STD)
        return (override or _default_size(dataset), *stats, None)
    if arch not in ARCHS:
        raise ValueError(f"unknown --arch {arch!r}; choose from {', '.join(ARCHS)}")
    size, mean, std, crop = zoo_spec(arch)
    return override or size, mean, std, crop


def check_data_fits(args: argparse.Namespace) -> int:
    """The model's input size, after checking that --dataset has images of that size."""
    from ..models import is_factory

    size = input_spec(args)[0]
    imagenet = args.dataset.startswith("imagenet")
    if not is_factory(args.arch) and imagenet != (size != 32):
        why = (
            "the ImageNet data sets are for ImageNet models"
            if imagenet
            else "the CIFAR data sets are 32px; use --dataset imagenet-sample or imagenet"
        )
        raise ValueError(f"--arch {args.arch} takes {size}px inputs; --dataset {args.dataset} does not fit it ({why})")
    return size


def images(args: argparse.Namespace, split: str, n: Optional[int], augment: bool, seed: int):
    """A split of ``--dataset`` as ``TensorImages``, or ``FolderImages`` for an
    image folder (seeded, class-balanced when ``n`` is set), sized and
    normalised for the model; ``cifar10-lossless-20``: the 20 shipped
    lossless test images."""
    from ..data.local import FOLDER_DATASETS, foolbox_samples, load_split
    from ..data.tensorimages import TensorImages

    size, mean, std, crop = input_spec(args)
    if args.dataset == LOSSLESS_20:
        x, y = foolbox_samples("cifar10", args.data_dir)
        return TensorImages(x[:n], y[:n], mean, std)
    if args.dataset in FOLDER_DATASETS:
        from ..data.imagefolder import folder_split

        if not args.data_dir:
            raise ValueError(
                f"--dataset {args.dataset} reads the folder given as --data-dir DIR "
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


def ignored_layers(model: nn.Module, scope: str) -> List[nn.Module]:
    """The layers --scope leaves whole: for the CIFAR ResNets, ``inner`` keeps
    the stage widths (only each block's inner conv is pruned)."""
    from ..surgery.prune import model_ignored_layers

    return model_ignored_layers(model, scope)


def job_settings(args: argparse.Namespace, spec, size: int, **more: Any):
    """The ``JobSettings`` of ``prune`` and of every ``bench`` cell: the
    specification ``spec`` with the distillation, batch, device and
    precision flags (``more``: what one command adds)."""
    from ..job.pipeline import JobSettings

    return JobSettings(
        **spec.prune_fields(),
        epochs=args.finetune_epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        input_size=size,
        device=args.device,
        precision=args.precision,
        **more,
    )


def job_data(args: argparse.Namespace):
    """The image sets of a prune job (``prune``, and every cell of ``bench``),
    each drawn with its own seed so they never change with the others'
    counts: test images to evaluate, training images to score, to
    re-estimate BatchNorm on (``--bn-images``, none at 0) and to distill on
    (none without ``--finetune-epochs``)."""
    from ..job.pipeline import JobData

    return JobData(
        evaluation=images(args, "test", args.eval_images, False, args.seed),
        scoring=images(args, "train", args.score_images, False, args.seed + 1),
        calibration=images(args, "train", args.bn_images, False, args.seed + 3) if args.bn_images else None,
        training=images(args, "train", args.train_images, True, args.seed + 2) if args.finetune_epochs else None,
    )
