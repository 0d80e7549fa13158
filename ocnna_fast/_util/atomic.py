"""One atomic-write helper for every file ocnna-fast writes.

A reader sees either the old file or the complete new one, never a partial
write: the data goes to a temporary file in the same folder (so the rename
stays on one file system), is flushed to disk, then renamed over the target.
On any error the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Optional, Union

if TYPE_CHECKING:
    import torch

__all__ = ["atomic_path", "write_text_atomic", "replace_all", "save_tensors"]

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yields a temporary path to write; on success it replaces ``path``."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {target}: it is a directory")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield str(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text_atomic(path: PathLike, text: str) -> None:
    """``Path(path).write_text(text)``, atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def replace_all(staged: Mapping[Path, Path]) -> None:
    """Moves each staged file onto its target (``{target: staged}``), all or
    none: a target that cannot be replaced (a folder in its place, a failing
    rename) puts back every target already moved, as it was, and raises.
    The staged files are the caller's to remove after a failure."""
    for target in staged:
        if Path(target).is_dir():
            raise IsADirectoryError(f"cannot write {target}: it is a directory (nothing was replaced)")
    moved = []  # (target, its previous file or None)
    try:
        for target, src in staged.items():
            target = Path(target)
            previous = None
            if target.exists() or target.is_symlink():
                previous = target.with_name(f".{target.name}.previous-{os.getpid()}")
                os.replace(target, previous)
            moved.append((target, previous))
            os.replace(src, target)
    except BaseException:
        for target, previous in reversed(moved):
            with contextlib.suppress(OSError):
                if previous is not None:
                    os.replace(previous, target)
                elif target.exists():
                    os.remove(target)
        raise
    for _, previous in moved:
        if previous is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(previous)


def save_tensors(
    tensors: Mapping[str, "torch.Tensor"], path: PathLike, metadata: Optional[Mapping[str, str]] = None
) -> str:
    """Writes ``tensors`` to ``path`` as safetensors, atomically and the same
    bytes for the same content; returns the file's sha256.

    The safetensors writer orders the metadata keys differently from run to
    run, so two runs that computed the same thing wrote files of different
    hashes; the header is written again with its keys sorted (the format
    allows any order, and the tensors' offsets are relative to the header's end)."""
    from safetensors.torch import save

    blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata=dict(metadata) if metadata else None)
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the writer leaves it
    blob = len(text).to_bytes(8, "little") + text + blob[8 + n :]
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(blob)
    return hashlib.sha256(blob).hexdigest()
