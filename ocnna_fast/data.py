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

__all__ = ["data_root", "foolbox_samples", "cifar10_jpeg", "normalize"]

PathLike = Union[str, os.PathLike]
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def data_root(root: Optional[PathLike] = None) -> Path:
    """``root``, else ``$OCNNA_DATA_DIR``, else ``../shared/data`` beside this checkout."""
    if root is not None:
        return Path(root)
    env = os.environ.get("OCNNA_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


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


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32, scaled to [0, 1] then standardised per channel."""
    x = images.float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s
