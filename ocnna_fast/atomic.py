"""One atomic-write helper for every file ocnna-fast writes.

A reader sees either the old file or the complete new one, never a partial
write: the data goes to a temporary file in the same folder (so the rename
stays on one file system), is flushed to disk, then renamed over the target.
On any error the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Union

__all__ = ["atomic_path", "write_text_atomic"]

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
