"""Local datasets: the shipped real images and what ``ocnna-fast fetch``
downloaded, read without any download.

Files are looked up over the data places of :mod:`ocnna_fast.data.places`
(``--data-dir``/``$OCNNA_DATA_DIR``, the checkout's ``data/``, the user cache,
``../shared/data``); a missing file names every place searched and, when one
exists, the fetch command that gets it.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .._util.validate import as_count, positive_int
from .fetch import REMOTES, fetch
from .places import data_places, find_data

__all__ = [
    "ADAPTED",
    "ADAPTED_SHA256",
    "adapted_weights",
    "data_places",
    "find_data",
    "fetch",
    "REMOTES",
    "foolbox_samples",
    "cifar10_jpeg",
    "imagenet_sample",
    "torchvision_cifar",
    "normalize",
    "load_split",
    "balanced_subset",
    "CentralFraction",
    "pretrained_weights",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PathLike = Union[str, os.PathLike]
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# the data sets every CLI command takes as --dataset: number of classes, and
# what reports say about them
DATASETS: Dict[str, Tuple[int, str]] = {
    "cifar10-jpeg": (10, "cifar10-jpeg: CIFAR-10 re-encoded as quality-75 JPEG (shipped; see data/README.md)"),
    "cifar10": (10, "cifar10: lossless CIFAR-10 (torchvision's archive)"),
    "cifar100": (100, "cifar100: lossless CIFAR-100, fine labels (torchvision's archive)"),
    "imagenet-sample": (
        1000,
        "imagenet-sample: the 1000-image ImageNet sample (one image per class, probably from "
        "the training split: relative drops only); train = even, test = odd positions",
    ),
    "imagenet": (
        1000,
        "imagenet: an ImageNet-layout folder (--data-dir DIR: DIR/train/<wnid>/*.JPEG for scoring, "
        "BatchNorm and training, DIR/val/<wnid>/*.JPEG for evaluation), resize + centre crop",
    ),
}
# data sets read from a folder the user names, image by image, instead of into memory
FOLDER_DATASETS = ("imagenet",)

PRETRAINED = {
    "resnet20": "resnet20-12fca82f.th",
    "resnet32": "resnet32-d509ac18.th",
    "resnet44": "resnet44-014dd654.th",
    "resnet56": "resnet56-4bfd9763.th",
}


# the CIFAR ResNets adapted to the shipped JPEG images by ``ocnna-fast
# finetune`` (data/README.md gives the recipe): the base models of jobs on
# ``cifar10-jpeg``, where akamaster's weights, trained on lossless images,
# lose about ten points before anything is pruned
ADAPTED_FOLDER = "resnet-cifar10-jpeg-adapted"
ADAPTED = {arch: f"{arch}-cifar10-jpeg-adapted.safetensors" for arch in PRETRAINED}
# their sha256, pinned (data/README.md): a shipped base that changed is a test failure, not a quiet new baseline
ADAPTED_SHA256 = {
    "resnet20": "67cd2f346e1d669050e5278a7965b54c84f85c65cb5399a938e5c55b69c36b7c",
    "resnet32": "eea76a9f61c395a2fde631a8297b069147ecb02db3fd1b4822c5300167217b5e",
    "resnet44": "22563eca861695781a7e3e008950cb6738218da872faf3d753f209aa569baab3",
    "resnet56": "619f92bab5a1bc9e20b6d7a3489f5d011ce848b7a916f25c26253e3d23c899d1",
}


def adapted_weights(arch: str, root: Optional[PathLike] = None) -> Optional[Path]:
    """The shipped JPEG-adapted weights of ``arch``, or ``None`` where none are made or found."""
    if arch not in ADAPTED:
        return None
    try:
        return find_data(f"{ADAPTED_FOLDER}/{ADAPTED[arch]}", root)
    except FileNotFoundError:
        return None


def pretrained_weights(arch: str, root: Optional[PathLike] = None) -> Path:
    """The shipped (or fetched) CIFAR-10 checkpoint of a CIFAR ResNet."""
    if arch not in PRETRAINED:
        raise ValueError(f"no pretrained weights are known for {arch!r}; they exist for {', '.join(PRETRAINED)}")
    return find_data(
        f"resnet-cifar10-akamaster/{PRETRAINED[arch]}", root, f"{arch} CIFAR-10 weights", f"ocnna-fast fetch {arch}"
    )


def balanced_subset(labels: np.ndarray, limit: Optional[int], seed: int) -> np.ndarray:
    """Indices of a seeded, class-balanced subset of ``limit`` items, in
    their original order (data sets often list one class after another, so a
    plain prefix would hold one class)."""
    if limit is not None:
        limit = positive_int(limit, "the number of images")
    as_count(seed, "seed")
    order = np.arange(len(labels))
    if limit is None or limit >= len(labels):
        return order
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    n = len(classes)
    # the remainder's extra images go to classes drawn at random: taken in label
    # order, fewer images than classes would be the first classes alone, whatever the seed
    extra = rng.permutation(n) < limit % n
    share = [limit // n + int(e) for e in extra]
    picked = np.concatenate([p[:k] for k, p in zip(share, per_class)])
    short = limit - len(picked)
    if short > 0:  # classes holding fewer than their share: the rest drawn from the others' remaining images
        left = np.concatenate([p[k:] for k, p in zip(share, per_class)])
        picked = np.concatenate([picked, rng.permutation(left)[:short]])
    return np.sort(picked)


def load_split(
    dataset: str,
    split: str,
    root: Optional[PathLike] = None,
    limit: Optional[int] = None,
    seed: int = 0,
    size: int = 224,
    crop_fraction: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 images (N, 3, H, W), int64 labels)`` of one split
    (``train``/``test``) of a data set in :data:`DATASETS`, optionally a
    seeded class-balanced subset of ``limit`` images.  CIFAR sets are 32px;
    ``imagenet-sample`` is resized to ``size`` (``crop_fraction``: see
    :func:`imagenet_sample`) and split in two halves, even positions for
    ``train`` (scoring, BatchNorm, distillation) and odd ones for ``test``."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if dataset in FOLDER_DATASETS:
        raise ValueError(f"--dataset {dataset} is read image by image: use ocnna_fast.data.imagefolder.folder_split")
    if dataset == "cifar10-jpeg":
        return cifar10_jpeg(split, root, limit=limit, seed=seed)
    if dataset == "imagenet-sample":
        x, y = imagenet_sample(root, size=size, crop_fraction=crop_fraction)
        half = slice(0, None, 2) if split == "train" else slice(1, None, 2)
        x, y = x[half], y[half]
    else:
        x, y = torchvision_cifar(root, dataset, train=split == "train")
    keep = torch.from_numpy(balanced_subset(y.numpy(), limit, seed))
    return x[keep].contiguous(), y[keep]


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def foolbox_samples(
    dataset: str = "cifar10", root: Optional[PathLike] = None, size: int = 224, crop_fraction: float = 0.875
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The 20 lossless test images of ``cifar10`` or ``cifar100`` (32x32), or
    the 20 ``imagenet`` JPEGs (their central ``crop_fraction`` resized to
    ``size``), from the foolbox wheel: ``(uint8 images (N, 3, H, W), int64
    labels)``; ImageNet labels are the standard 0..999 index."""
    if dataset not in ("cifar10", "cifar100", "imagenet"):
        raise ValueError(f"dataset must be 'cifar10', 'cifar100' or 'imagenet', got {dataset!r}")
    from PIL import Image

    ext = "jpg" if dataset == "imagenet" else "png"
    folder = find_data(f"foolbox-samples/{dataset}", root, f"foolbox {dataset} samples")
    files = sorted(folder.glob(f"{dataset}_*_*.{ext}"))
    if not files:
        raise FileNotFoundError(f"no {dataset}_NN_label.{ext} files in {folder}")
    images, labels = [], []
    for f in files:
        m = re.fullmatch(rf"{dataset}_(\d+)_(\d+)\.{ext}", f.name)
        if not m:
            continue
        if dataset == "imagenet":
            with Image.open(f) as im:
                images.append(np.asarray(CentralFraction(crop_fraction, size)(im.convert("RGB")), dtype=np.uint8))
        else:
            images.append(_decode(f.read_bytes()))
        labels.append(int(m.group(2)))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64)


def cifar10_jpeg(
    split: str = "test", root: Optional[PathLike] = None, limit: Optional[int] = None, seed: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from the JPEG (quality ~75) tarball: ``(uint8 (N, 3, 32, 32), labels)``.

    ``limit`` takes a class-balanced, seeded subset (the tar lists classes in
    order, so a plain prefix would hold one class).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    tar_path = find_data(f"cifar10-jpeg-yoongikim/cifar10_{split}_jpg.tar.gz", root, f"CIFAR-10 JPEG {split} tarball")
    with tarfile.open(tar_path, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        labels = [CIFAR10_CLASSES.index(Path(m.name).parent.name) for m in members]
        order = balanced_subset(np.array(labels), limit, seed)
        chosen = set(order.tolist())
        images = {}
        for i, m in enumerate(members):
            if i in chosen:
                images[i] = _decode(tar.extractfile(m).read())
    x = torch.from_numpy(np.stack([images[i] for i in order])).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([labels[i] for i in order], dtype=torch.int64)
    return x, y


def _resize_center_crop(im, size: int, resize: int):
    """Short side to ``resize`` (bilinear), then the central ``size`` square."""
    from PIL import Image

    w, h = im.size
    scale = resize / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


class CentralFraction:
    """TensorFlow's evaluation crop, as a PIL transform: the central
    ``fraction`` of each side, resized to ``size`` square (bilinear)."""

    def __init__(self, fraction: float, size: int) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], got {fraction}")
        self.fraction, self.size = fraction, size

    def __call__(self, im):
        from PIL import Image

        w, h = im.size
        cw, ch = round(w * self.fraction), round(h * self.fraction)
        left, top = (w - cw) // 2, (h - ch) // 2
        return im.crop((left, top, left + cw, top + ch)).resize((self.size, self.size), Image.BILINEAR)

    def __repr__(self) -> str:
        return f"CentralFraction({self.fraction}, {self.size})"


def imagenet_sample(
    root: Optional[PathLike] = None,
    limit: Optional[int] = None,
    size: int = 224,
    resize: int = 256,
    crop_fraction: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The 1000-image ImageNet sample (one image per class, from the staged
    ``imagenet-sample-1000-eli/imagenet_sample_1000.tar``): uint8 images
    ``(N, 3, size, size)`` after a short-side resize and a centre crop, and the
    standard ImageNet-1k class index (the position in the sorted file list).
    Normalise with ``IMAGENET_MEAN``/``IMAGENET_STD`` for torchvision models.
    ``crop_fraction`` (e.g. 0.875, TensorFlow's evaluation for the TFLite
    MobileNets) instead takes that central fraction of each side and resizes
    it to ``size`` (bilinear)."""
    from PIL import Image

    tar_path = find_data(
        "imagenet-sample-1000-eli/imagenet_sample_1000.tar",
        root,
        "ImageNet 1000-image sample tar (kept outside the repository; see data/README.md)",
    )
    images, labels = [], []
    with tarfile.open(tar_path, "r:") as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".jpeg")),
            key=lambda m: Path(m.name).name,
        )
        if len(members) != 1000:
            raise ValueError(f"{tar_path} should hold 1000 JPEGs, found {len(members)}")
        for label, m in enumerate(members[: limit if limit is not None else None]):
            with Image.open(io.BytesIO(tar.extractfile(m).read())) as im:
                im = im.convert("RGB")
                if crop_fraction is not None:
                    im = CentralFraction(crop_fraction, size)(im)
                else:
                    im = _resize_center_crop(im, size, resize)
                images.append(np.asarray(im, dtype=np.uint8))
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64)


def torchvision_cifar(
    root: Optional[PathLike] = None, dataset: str = "cifar10", train: bool = False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10/100 in torchvision's on-disk layout (``cifar-10-batches-py/``
    or ``cifar-100-python/``, as ``ocnna-fast fetch cifar10`` leaves it) from
    the data places, never downloading: uint8 images ``(N, 3, 32, 32)`` and
    labels."""
    try:
        import torchvision
    except ImportError as exc:
        raise ImportError("reading torchvision's CIFAR layout needs torchvision") from exc
    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}.get(dataset)
    if cls is None:
        raise ValueError(f"dataset must be 'cifar10' or 'cifar100', got {dataset!r}")
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[dataset]
    found = find_data(
        folder, root, f"lossless {dataset} (torchvision's extracted {folder}/ folder)", f"ocnna-fast fetch {dataset}"
    )
    try:
        ds = cls(os.fspath(found.parent), train=train, download=False)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        raise FileNotFoundError(f"{found}: {exc}") from exc
    x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(ds.targets, dtype=torch.int64)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32, scaled to [0, 1] then standardised per channel."""
    x = images.float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s
