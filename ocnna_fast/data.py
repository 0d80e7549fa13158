"""Local datasets: the shipped real images, read without any download.

The data root is ``OCNNA_DATA_DIR`` (or the ``root`` argument), laid out as in
the project's shared/data folder; a missing file says what to put where.
"""
from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["data_root", "foolbox_samples", "cifar10_jpeg", "imagenet_sample", "torchvision_cifar", "normalize",
           "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PathLike = Union[str, os.PathLike]
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def data_root(root: Optional[PathLike] = None) -> Path:
    """Where the shipped data is: ``root`` if given, else ``$OCNNA_DATA_DIR``,
    else the first existing of ``../shared/data`` and ``./shared/data`` (from
    the current folder, e.g. the checkout) and ``shared/data`` beside the
    source tree of an editable install."""
    if root is not None:
        return Path(root)
    env = os.environ.get("OCNNA_DATA_DIR")
    if env:
        return Path(env)
    candidates = [
        Path.cwd().parent / "shared" / "data",
        Path.cwd() / "shared" / "data",
        Path(__file__).resolve().parents[2] / "shared" / "data",
    ]
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{what} not found at {path}. Put the shipped data folder there, or point "
            "OCNNA_DATA_DIR (or --data-dir) at the folder that holds "
            "'foolbox-samples/', 'cifar10-jpeg-yoongikim/' and 'resnet-cifar10-akamaster/'."
        )
    return path


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def foolbox_samples(dataset: str = "cifar10", root: Optional[PathLike] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The 20 lossless test images of ``cifar10`` or ``cifar100`` from the
    foolbox wheel: ``(uint8 images (N, 3, H, W), int64 labels)``."""
    if dataset not in ("cifar10", "cifar100"):
        raise ValueError(f"dataset must be 'cifar10' or 'cifar100', got {dataset!r}")
    folder = _need(data_root(root) / "foolbox-samples" / dataset, f"foolbox {dataset} samples")
    files = sorted(folder.glob(f"{dataset}_*_*.png"))
    if not files:
        raise FileNotFoundError(f"no {dataset}_NN_label.png files in {folder}")
    images, labels = [], []
    for f in files:
        m = re.fullmatch(rf"{dataset}_(\d+)_(\d+)\.png", f.name)
        if not m:
            continue
        images.append(_decode(f.read_bytes()))
        labels.append(int(m.group(2)))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64)


def cifar10_jpeg(split: str = "test", root: Optional[PathLike] = None, limit: Optional[int] = None,
                 seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from the JPEG (quality ~75) tarball: ``(uint8 (N, 3, 32, 32), labels)``.

    ``limit`` takes a class-balanced, seeded subset (the tar lists classes in
    order, so a plain prefix would hold one class).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    tar_path = _need(data_root(root) / "cifar10-jpeg-yoongikim" / f"cifar10_{split}_jpg.tar.gz",
                     f"CIFAR-10 JPEG {split} tarball")
    with tarfile.open(tar_path, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        labels = [CIFAR10_CLASSES.index(Path(m.name).parent.name) for m in members]
        order = np.arange(len(members))
        if limit is not None and limit < len(members):
            rng = np.random.default_rng(seed)
            per_class = [rng.permutation(np.flatnonzero(np.array(labels) == k)) for k in range(10)]
            picked = np.concatenate([p[: (limit + 9 - k) // 10] for k, p in enumerate(per_class)])
            order = np.sort(picked)[:limit]
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


def imagenet_sample(root: Optional[PathLike] = None, limit: Optional[int] = None, size: int = 224,
                    resize: int = 256) -> Tuple[torch.Tensor, torch.Tensor]:
    """The 1000-image ImageNet sample (one image per class, from the staged
    ``imagenet-sample-1000-eli/imagenet_sample_1000.tar``): uint8 images
    ``(N, 3, size, size)`` after a short-side resize and a centre crop, and the
    standard ImageNet-1k class index (the position in the sorted file list).
    Normalise with ``IMAGENET_MEAN``/``IMAGENET_STD`` for torchvision models."""
    from PIL import Image

    tar_path = _need(data_root(root) / "imagenet-sample-1000-eli" / "imagenet_sample_1000.tar",
                     "ImageNet 1000-image sample tar")
    images, labels = [], []
    with tarfile.open(tar_path, "r:") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".jpeg")),
                         key=lambda m: Path(m.name).name)
        if len(members) != 1000:
            raise ValueError(f"{tar_path} should hold 1000 JPEGs, found {len(members)}")
        for label, m in enumerate(members[: limit if limit is not None else None]):
            with Image.open(io.BytesIO(tar.extractfile(m).read())) as im:
                images.append(np.asarray(_resize_center_crop(im.convert("RGB"), size, resize), dtype=np.uint8))
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64)


def torchvision_cifar(root: PathLike, dataset: str = "cifar10", train: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10/100 from torchvision's standard on-disk layout under ``root``
    (``cifar-10-batches-py/`` or ``cifar-100-python/``), never downloading:
    uint8 images ``(N, 3, 32, 32)`` and labels."""
    try:
        import torchvision
    except ImportError as exc:
        raise ImportError("reading torchvision's CIFAR layout needs torchvision") from exc
    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}.get(dataset)
    if cls is None:
        raise ValueError(f"dataset must be 'cifar10' or 'cifar100', got {dataset!r}")
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[dataset]
    _need(Path(root) / folder, f"torchvision {dataset} data (the extracted {folder}/ folder)")
    try:
        ds = cls(os.fspath(root), train=train, download=False)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        raise FileNotFoundError(f"{Path(root) / folder}: {exc}") from exc
    x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(ds.targets, dtype=torch.int64)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32, scaled to [0, 1] then standardised per channel."""
    x = images.float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s
