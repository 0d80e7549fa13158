"""Images held in memory as uint8 tensors, normalised (and augmented) batch
by batch: the data set type of the CIFAR sets and the ImageNet sample.
``imagefolder.FolderImages`` has the same interface for folders on disk."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .._util import validate

__all__ = ["TensorImages", "image_side"]


class TensorImages:
    """uint8 images ``(N, 3, H, W)`` and labels, normalised on the fly, with
    optional CIFAR-style augmentation (4-pixel padded random crop, horizontal
    flip) drawn from a generator the caller seeds."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, augment: bool = False) -> None:
        if images.dim() != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError("images must be (N, C, H, W) with one label each")
        self.images, self.labels, self.augment = images, labels, augment
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def fingerprint(self) -> str:
        """sha256 of the images, labels, normalisation and augmentation flag:
        what a distillation checkpoint records of its data."""
        return validate.tensors_sha256(
            {"images": self.images, "labels": self.labels, "mean": self.mean, "std": self.std},
            [("augment", str(self.augment))],
        )

    def batch(
        self, idx: torch.Tensor, gen: Optional[torch.Generator] = None, shard: Optional[Tuple[int, int]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images ``idx``, normalised (and augmented from ``gen``).  With
        ``shard=(rank, world)`` only positions ``rank::world`` of the batch,
        augmented with the draws of the whole batch, so the processes of a
        sharded run together see exactly what one process would."""
        n = int(idx.shape[0])
        if self.augment:
            if gen is None:
                raise ValueError("augmentation needs a generator")
            dy = torch.randint(0, 9, (n,), generator=gen)
            dx = torch.randint(0, 9, (n,), generator=gen)
            flip = torch.rand(n, generator=gen) < 0.5
        mine = slice(shard[0], None, shard[1]) if shard is not None else slice(None)
        idx = idx[mine]
        x = self.images[idx].float().div_(255.0)
        if self.augment:
            dy, dx, flip = dy[mine], dx[mine], flip[mine]
            _, _, h, w = x.shape
            padded = F.pad(x, (4, 4, 4, 4))
            out = torch.empty_like(x)
            for i in range(x.shape[0]):
                crop = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
                out[i] = crop.flip(-1) if flip[i] else crop
            x = out
        return (x - self.mean) / self.std, self.labels[idx]

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        gen: Optional[torch.Generator] = None,
        shard: Optional[Tuple[int, int]] = None,
    ):
        """Batches of ``batch_size`` in order, or shuffled from ``gen``; with
        ``shard=(rank, world)``, this process's share of each (see ``batch``)."""
        order = torch.randperm(len(self), generator=gen) if shuffle else torch.arange(len(self))
        for s in range(0, len(self), batch_size):
            yield self.batch(order[s : s + batch_size], gen, shard)


def image_side(data) -> int:
    """The side in pixels of a data set's images (its first batch's last dimension)."""
    for x, _ in data.batches(1):
        return int(x.shape[-1])
    raise ValueError("the data set holds no images")
