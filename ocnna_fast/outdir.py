"""The ``--out`` folder of a command: created on demand, locked while a run
writes it, and filled through a staging folder so that an interrupted run
never leaves new files beside an old run's report."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator, Sequence, Union

__all__ = ["INCOMPLETE", "OutputLocked", "out_dir", "locked", "staged", "publish"]

INCOMPLETE = "INCOMPLETE"
LOCK = ".ocnna-fast.lock"
STAGING = ".staging-"


class OutputLocked(OSError):
    """Another live run is writing the same folder."""


def out_dir(path: Union[str, os.PathLike]) -> Path:
    """The --out folder, created if missing; a file in its place is an error."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True


@contextlib.contextmanager
def locked(out: Path) -> Iterator[Path]:
    """Holds an exclusive lock on ``out`` for the run (a second run into the
    same folder fails at once, naming the first), and removes the staging
    folders that runs killed earlier left behind."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock, as before
        fcntl = None
    handle = open(out / LOCK, "a+")
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "?"
                raise OutputLocked(
                    f"another ocnna-fast run (pid {holder}) is writing {out}; wait for it to end or choose another --out"
                ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        for stale in out.glob(f"{STAGING}*"):
            pid = stale.name[len(STAGING) :]
            if stale.is_dir() and (not pid.isdigit() or not _alive(int(pid)) or int(pid) == os.getpid()):
                shutil.rmtree(stale, ignore_errors=True)
        yield out
    finally:
        handle.close()  # closing releases the lock; the file stays (removing it would race a waiting run)


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh folder inside ``out`` for a run's outputs.  Nothing in ``out``
    changes until the run succeeds and ``publish`` moves them in; the folder
    is removed whatever happens (and by the next run into ``out`` if this
    process is killed)."""
    staging = out / f"{STAGING}{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, out: Path, names: Sequence[str]) -> None:
    """Moves a finished run's outputs from ``staging`` into ``out``.  While
    they move, ``out/INCOMPLETE`` says the folder mixes two runs; it is removed
    once all are in place (a folder that keeps it was interrupted here)."""
    marker = out / INCOMPLETE
    marker.write_text(
        "ocnna-fast was replacing the outputs in this folder and was interrupted: "
        "they may mix two runs. Rerun the command.\n"
    )
    for name in names:
        dst = out / name
        if dst.is_dir():
            shutil.rmtree(dst)
        os.replace(staging / name, dst)
    marker.unlink()
