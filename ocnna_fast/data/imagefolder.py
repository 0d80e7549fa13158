"""Image folders on disk (the ImageNet layout ``DIR/train/<wnid>/*.JPEG``,
``DIR/val/<wnid>/*.JPEG``), read through torchvision's ``ImageFolder`` and a
``DataLoader`` with worker processes.

:class:`FolderImages` has the interface of :class:`ocnna_fast.data.tensorimages.TensorImages`
(``len``, ``batches``, ``fingerprint``), so scoring, BatchNorm re-estimation,
evaluation and distillation take either.  Nothing is held in memory: batches
are decoded as they are needed.

Exact resume: ``batches(shuffle=True, gen=...)`` draws the order *and one seed
per image* from the caller's generator before any worker starts; a worker
seeds the random augmentation of an image from that image's seed.  So the
batches of an epoch depend on the generator alone, not on the number of
workers or on which worker decoded which image.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "UnreadableImage",
    "FolderImages",
    "folder_split",
    "folder_classes",
    "eval_transform",
    "train_transform",
    "SPLIT_FOLDERS",
]

PathLike = Union[str, os.PathLike]
# the split names the commands use -> the folder of the ImageNet layout
SPLIT_FOLDERS = {"train": "train", "test": "val"}


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float], crop_fraction: Optional[float] = None):
    """The usual evaluation transform: the short side resized to ``size * 256/224``
    and the central ``size`` square (resize-256 / centre-crop-224 at 224), or,
    with ``crop_fraction``, that central fraction resized to ``size``; then
    scaled to [0, 1] and standardised."""
    from torchvision import transforms as T

    from .local import CentralFraction

    crop = (
        [CentralFraction(crop_fraction, size)]
        if crop_fraction is not None
        else [T.Resize(round(size * 256 / 224)), T.CenterCrop(size)]
    )
    return T.Compose([*crop, T.ToTensor(), T.Normalize(mean, std)])


def train_transform(size: int, mean: Sequence[float], std: Sequence[float]):
    """The usual ImageNet training augmentation: a random resized crop to
    ``size`` and a horizontal flip, then scaled and standardised."""
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


class UnreadableImage(ValueError):
    """An image file of the folder cannot be decoded (the message names it)."""


class _Seeded(torch.utils.data.Dataset):
    """Items are ``(index, seed)`` pairs: the transform of image ``index`` runs
    with torch's random state seeded by ``seed`` (restored afterwards, so the
    caller's random state never moves)."""

    def __init__(self, folder, transform) -> None:
        self.folder, self.transform = folder, transform

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, item: Tuple[int, int]):
        index, seed = item
        path, label = self.folder.samples[index]
        try:
            image = self.folder.loader(path)
        except Exception as exc:  # PIL raises several types for damaged or non-image files
            raise UnreadableImage(f"cannot read the image {path} ({type(exc).__name__}: {exc})") from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x = self.transform(image)
        return x, label


class FolderImages:
    """One split of an image folder (``root/<class>/<image>``; classes are the
    sorted folder names, as torchvision's ``ImageFolder`` numbers them),
    with the evaluation transform, or the training augmentation when ``augment``."""

    def __init__(
        self,
        root: PathLike,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        crop_fraction: Optional[float] = None,
        augment: bool = False,
        workers: int = 0,
    ) -> None:
        try:
            from torchvision.datasets import ImageFolder
        except ImportError as exc:
            raise ImportError('reading image folders needs torchvision: pip install "ocnna-fast[vision]"') from exc

        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} not found (expected {root}/<class>/<image files>)")
        try:
            self.folder = _image_folder(ImageFolder, root)
        except FileNotFoundError as exc:  # no class folders, or no images in them
            raise FileNotFoundError(f"{root}: {exc}") from exc
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.root, self.size, self.augment, self.workers = root, size, augment, workers
        self.mean, self.std, self.crop_fraction = tuple(mean), tuple(std), crop_fraction
        self.indices = list(range(len(self.folder.samples)))
        self.transform = train_transform(size, mean, std) if augment else eval_transform(size, mean, std, crop_fraction)
        self.labels = torch.tensor([self.folder.samples[i][1] for i in self.indices], dtype=torch.int64)

    def subset(self, indices: Sequence[int]) -> "FolderImages":
        """The same folder and transform restricted to ``indices`` (positions
        in this set), without scanning the folder again."""
        n = len(self)
        if any(not 0 <= int(i) < n for i in indices):
            raise ValueError(f"indices must lie in [0, {n})")
        other = copy.copy(self)
        other.indices = [self.indices[int(i)] for i in indices]
        other.labels = self.labels[torch.as_tensor([int(i) for i in indices], dtype=torch.int64)]
        return other

    @property
    def classes(self) -> List[str]:
        return list(self.folder.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def fingerprint(self) -> str:
        """sha256 of the chosen files' paths (relative to the root), sizes and
        labels, and of the transform: what a distillation checkpoint records of
        its data (reading every image's bytes would cost a pass over the set)."""
        h = hashlib.sha256(f"{self.transform!r}|mean={self.mean}|std={self.std}|aug={self.augment}|".encode())
        for i in self.indices:
            path, label = self.folder.samples[i]
            h.update(f"{os.path.relpath(path, self.root)}|{os.path.getsize(path)}|{label};".encode())
        return h.hexdigest()

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        gen: Optional[torch.Generator] = None,
        shard: Optional[Tuple[int, int]] = None,
    ) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """``(images (B, 3, size, size) float32, labels)`` batches in file
        order, or shuffled (and augmented) from ``gen``; with ``shard=(rank,
        world)`` positions ``rank::world`` of each batch (what
        ``DistributedSampler`` gives a process), decoded by this process alone."""
        n = len(self)
        if (shuffle or self.augment) and gen is None:
            raise ValueError("shuffling and augmentation need a generator")
        order = torch.randperm(n, generator=gen).tolist() if shuffle else list(range(n))
        # one seed per image, drawn up front in the caller's process
        seeds = torch.randint(0, 2**62, (n,), generator=gen).tolist() if self.augment else [0] * n
        pairs = [(self.indices[p], seeds[p]) for p in order]
        mine = slice(shard[0], None, shard[1]) if shard is not None else slice(None)
        chunks = [pairs[s : s + batch_size][mine] for s in range(0, n, batch_size)]
        loader = torch.utils.data.DataLoader(
            _Seeded(self.folder, self.transform),
            batch_sampler=chunks,
            num_workers=self.workers,
            # its own generator: the loader draws worker seeds from
            # it, not from (and so never moves) torch's global state
            generator=torch.Generator().manual_seed(0),
        )
        try:
            yield from loader
        except UnreadableImage as exc:
            # from a worker process the message carries the worker's traceback: keep its last line
            last = str(exc).strip().splitlines()[-1]
            raise UnreadableImage(last.split(f"{UnreadableImage.__name__}: ", 1)[-1]) from None


def _image_folder(image_folder, root: Path):
    """torchvision's ``ImageFolder`` over ``root``, its files found by ``class_samples``."""

    class Once(image_folder):
        @staticmethod
        def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
            return class_samples(directory, class_to_idx, extensions, is_valid_file, allow_empty)

    return Once(os.fspath(root))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def class_samples(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
    """``(path, label)`` of every image under each class folder, in
    torchvision's order, links followed as users expect (a class folder that
    is a link to a real folder is common) but no folder visited twice, none
    that holds the split or another class's images (a link back up the tree),
    and no image read twice: an image is read under one class only."""
    from torchvision.datasets.folder import has_file_allowed_extension

    def valid(name: str) -> bool:
        return is_valid_file(name) if is_valid_file is not None else has_file_allowed_extension(name, extensions)

    top = os.path.realpath(directory)
    real = {c: os.path.realpath(os.path.join(directory, c)) for c in class_to_idx}
    visited, files, samples = set(), set(), []
    for cls in sorted(class_to_idx, key=class_to_idx.get):
        others = [r for c, r in real.items() if c != cls]
        if real[cls] in visited or any(_inside(real[cls], o) or _inside(o, real[cls]) for o in others):
            twin = next(c for c, r in real.items() if c != cls and (_inside(r, real[cls]) or _inside(real[cls], r)))
            raise ValueError(f"{directory}: class folders {twin!r} and {cls!r} share images (links to one folder)")
        visited.add(real[cls])
        found = []
        for path, dirs, names in os.walk(os.path.join(directory, cls), followlinks=True):
            kept = []
            for d in dirs:
                r = os.path.realpath(os.path.join(path, d))
                if r in visited or _inside(top, r) or any(_inside(r, o) or _inside(o, r) for o in others):
                    continue  # seen already, or back up the tree into the split or another class
                visited.add(r)
                kept.append(d)
            dirs[:] = kept
            found.append((path, names))
        count = len(samples)
        for path, names in sorted(found):
            for name in sorted(names):
                file = os.path.join(path, name)
                r = os.path.realpath(file)
                if r in files or any(_inside(r, o) for o in others):
                    continue  # read already, or another class's image
                if valid(file) and os.path.isfile(r):
                    files.add(r)
                    samples.append((file, class_to_idx[cls]))
        if len(samples) == count and not allow_empty:
            raise FileNotFoundError(f"found no valid image file in the class folder {cls!r} of {directory}")
    return samples


def folder_classes(root: PathLike) -> List[str]:
    """The class folders of ``root/train`` (sorted: the label order), after
    checking that ``root/val`` has the same ones where it exists."""
    root = Path(root)
    found = {}
    for split in ("train", "val"):
        d = root / split
        if d.is_dir():
            found[split] = sorted(e.name for e in os.scandir(d) if e.is_dir())
    if not found:
        raise FileNotFoundError(
            f"neither {root}/train nor {root}/val exists: --dataset imagenet reads the "
            "ImageNet layout DIR/train/<wnid>/*.JPEG, DIR/val/<wnid>/*.JPEG"
        )
    if len(found) == 2 and found["train"] != found["val"]:
        only = sorted(set(found["train"]) ^ set(found["val"]))
        raise ValueError(
            f"{root}/train and {root}/val hold different class folders (e.g. {only[:3]}): labels would not line up"
        )
    return found.get("train", found.get("val"))


def folder_split(
    root: PathLike,
    split: str,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_fraction: Optional[float] = None,
    augment: bool = False,
    workers: int = 0,
    limit: Optional[int] = None,
    seed: int = 0,
) -> FolderImages:
    """Split ``train`` (``root/train``) or ``test`` (``root/val``) of an
    ImageNet-layout folder; ``limit`` takes a seeded class-balanced subset."""
    from .local import balanced_subset

    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    folder = root / SPLIT_FOLDERS[split]
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} not found: --dataset imagenet reads the ImageNet layout "
            f"{root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG (pass its root as --data-dir)"
        )
    folder_classes(root)  # refuses train/val class folders that differ: labels would not line up
    full = FolderImages(folder, size, mean, std, crop_fraction, augment, workers)
    if limit is None or limit >= len(full):
        return full
    return full.subset(balanced_subset(np.asarray(full.labels), limit, seed).tolist())
