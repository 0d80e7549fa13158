"""Images a ``DataLoader`` (or any re-iterable of batches) yields, read the
way a job reads ``TensorImages`` and ``FolderImages``: in batches of the
size it asks for, in the loader's order, each process of a sharded run
taking its interleaved share of every batch.  The loader's own transforms
and normalisation stand; nothing is normalised again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Iterable, List, Optional, Tuple

import torch

__all__ = ["LoaderImages", "as_images"]


class LoaderImages:
    """``loader`` yields ``(images, labels)`` (tuples or lists, as a
    ``DataLoader`` over an image data set does) or bare image tensors
    (labels unknown: such a set can be scored and calibrated on, not
    evaluated).  It is read again on every pass, so it must be re-iterable:
    a generator, read once, is refused.  ``labelled``: the labels are needed
    (evaluation), so bare image batches are refused rather than counted as
    misses."""

    augment = False

    def __init__(self, loader: Iterable[Any], labelled: bool = False) -> None:
        if isinstance(loader, Iterator):
            raise TypeError(
                "a generator or iterator of batches can be read once, and a job reads its images several "
                "times: give a DataLoader or a list of batches"
            )
        self.loader, self.labelled = loader, labelled
        self._len: Optional[int] = None

    def __len__(self) -> int:
        if self._len is None:
            try:
                self._len = len(self.loader.dataset)
            except (AttributeError, TypeError):  # no data set, or one without a length: count the images once
                self._len = sum(x.shape[0] for x, _ in self._pairs())
        return self._len

    def _pairs(self):
        for item in self.loader:
            if isinstance(item, torch.Tensor):
                if self.labelled:
                    raise TypeError("evaluation images need their labels: the loader yields image tensors alone")
                yield item, None
            elif isinstance(item, (tuple, list)) and len(item) >= 2 and isinstance(item[0], torch.Tensor):
                yield item[0], torch.as_tensor(item[1])
            else:
                raise TypeError(
                    f"a batch of the loader is {type(item).__name__}: expected (images, labels) or an image tensor"
                )

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        gen: Optional[torch.Generator] = None,
        shard: Optional[Tuple[int, int]] = None,
    ):
        """Batches of ``batch_size`` in the loader's order (the last may be
        smaller); with ``shard=(rank, world)``, positions ``rank::world`` of
        each.  Shuffled reading is refused: the loader holds its order."""
        if shuffle:
            raise TypeError(
                "distillation draws its own seeded order of the training images: give them as TensorImages or "
                "FolderImages (a DataLoader serves evaluation, scoring and calibration)"
            )
        xs: List[torch.Tensor] = []
        ys: List[Optional[torch.Tensor]] = []
        held = 0
        for x, y in self._pairs():
            xs.append(x)
            ys.append(y)
            held += x.shape[0]
            while held >= batch_size:
                yield self._cut(xs, ys, batch_size, shard)
                held -= batch_size
        if held:
            yield self._cut(xs, ys, held, shard)

    @staticmethod
    def _cut(xs: List[torch.Tensor], ys: List[Optional[torch.Tensor]], n: int, shard) -> Tuple[Any, Any]:
        """The first ``n`` images held (removed from ``xs``/``ys``), as one batch.
        One tensor held is cut as it is: a loader batch far larger than the
        job's is served in views, not copied again for every batch cut from it."""
        x = xs[0] if len(xs) == 1 else torch.cat(xs)
        y = None if any(v is None for v in ys) else (ys[0] if len(ys) == 1 else torch.cat(ys))
        xs[:] = [x[n:]] if x.shape[0] > n else []
        ys[:] = ([y[n:]] if y is not None else [None]) if x.shape[0] > n else []
        x, y = x[:n], (y[:n] if y is not None else None)
        if shard is not None:
            x, y = x[shard[0] :: shard[1]], (y[shard[0] :: shard[1]] if y is not None else None)
        if y is None:
            y = torch.full((x.shape[0],), -1, dtype=torch.long)  # unknown labels: never counted as hits
        return x, y


def as_images(data: Any, role: str) -> Any:
    """``data`` as a job reads it: a set with ``batches`` as it is, ``None``
    as ``None``, any other iterable of batches (a ``DataLoader``) wrapped in
    ``LoaderImages``; anything else refused naming ``role``."""
    if data is None or hasattr(data, "batches"):
        return data
    if role == "training":
        raise TypeError(
            "training= takes TensorImages or FolderImages: distillation draws its own seeded order and "
            f"augmentation of the images, which a {type(data).__name__} holds for itself"
        )
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError(
            f"{role}= takes TensorImages, FolderImages or a DataLoader (any re-iterable of (images, labels) "
            f"batches), got {type(data).__name__}"
        )
    return LoaderImages(data, labelled=role == "evaluation")
