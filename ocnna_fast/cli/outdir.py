"""The ``--out`` folder of a command: created on demand, locked while a run
writes it, and filled through a staging folder so that an interrupted run
never leaves new files beside an old run's report."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

from .._util.atomic import write_text_atomic

__all__ = ["INCOMPLETE", "OUTPUTS", "OutputLocked", "out_dir", "producer", "locked", "staged", "publish"]

INCOMPLETE = "INCOMPLETE"
LOCK = ".ocnna-fast.lock"
STAGING = ".staging-"
# names the command that owns a folder: no other kind of command writes into it
OWNER = ".ocnna-fast-command"
# what each command may write in its --out (checkpoints included): the names a
# finished run replaces or removes, and those its inputs must not be
OUTPUTS = {
    "prune": (
        "scores.safetensors",
        "pruned",
        "report.json",
        "report.md",
        "allocation-losses.json",
        "allocation-curve-losses.json",
        "distill",
    ),
    "finetune": ("model.safetensors", "report.json", "report.md", "finetune"),
    "score": ("scores.safetensors", "summary.json"),
    "bench": ("results.json", "results.md", "command.txt"),
}
# a folder written before folders were marked is told by what only its
# command writes: a name and the shape of its content, since a name alone
# (model.safetensors, summary.json) may be a file of the user's own
_SIGNATURES = (  # (the name, its command, the JSON file that shows it, keys that file has)
    ("pruned", "prune", "pruned/plan.json", set()),
    ("allocation-losses.json", "prune", "allocation-losses.json", {"fingerprint", "losses"}),
    ("results.json", "bench", "results.json", {"config", "rows"}),
    ("summary.json", "score", "summary.json", {"n_components", "layers"}),
    ("model.safetensors", "finetune", "report.json", {"weights_out", "history"}),
)


def _signed(folder: Path) -> Optional[tuple]:
    """The name in ``folder`` that shows which command wrote it, and that command, if any."""
    found = (s for s in _SIGNATURES if (folder / s[0]).exists() and _has(folder / s[2], s[3]))
    return next((s[:2] for s in found), None)


def _has(path: Path, keys: set) -> bool:
    """``path`` is a JSON object with ``keys``."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and keys <= set(doc)


class OutputLocked(OSError):
    """Another live run is writing the same folder."""


def producer(folder: Union[str, os.PathLike]) -> Optional[str]:
    """The command whose output ``folder`` holds (``"prune"`` for a pruned
    model folder), or ``None`` for a folder no command wrote."""
    folder = Path(folder)
    if (folder / "plan.json").is_file():
        return "prune"
    mark = folder / OWNER
    if mark.is_file():
        name = mark.read_text().strip()
        return name if name in OUTPUTS else "an unknown command"
    signed = _signed(folder)
    return signed[1] if signed else None


def check_not_pruned_model(path: Path, what: str) -> None:
    """``path`` lies in no pruned model folder (one holding ``plan.json``)."""
    for folder in (path, *path.parents):
        if (folder / "plan.json").is_file():
            raise ValueError(
                f"{what} {path} is inside {folder}, a pruned model written by `ocnna-fast prune` "
                "(plan.json); no command writes there: choose another place"
            )


def out_dir(
    path: Union[str, os.PathLike], command: Optional[str] = None, inputs: Iterable[Union[str, os.PathLike]] = ()
) -> Path:
    """The --out folder of ``command``, created if missing and marked as its
    own.  Refused in one line: a file in its place, a folder that another
    kind of command wrote (or a pruned model folder), or an output that would
    replace one of the command's ``inputs``."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder; choose another --out")
    if command is None:
        out.mkdir(parents=True, exist_ok=True)
        return out
    check_not_pruned_model(out, "--out")
    owner = producer(out) if out.is_dir() else None
    if owner is not None and owner != command:
        raise ValueError(
            f"--out {out} holds the output of `ocnna-fast {owner}` ({_evidence(out)}); "
            f"`ocnna-fast {command}` writes only into its own folders: choose another --out"
        )
    if owner is None and out.is_dir():
        # an unmarked folder's files of those names are not known to be a run's: replacing them could lose work
        foreign = [name for name in OUTPUTS[command] if (out / name).exists()]
        if foreign:
            raise ValueError(
                f"--out {out} holds {', '.join(foreign)}, which no ocnna-fast run is known to have written, "
                f"and `ocnna-fast {command}` would replace: choose another --out"
            )
    for given in inputs:
        src = Path(given).resolve()
        for name in OUTPUTS[command]:
            dst = (out / name).resolve()
            if src == dst or dst in src.parents:
                raise ValueError(f"--out {out} would replace {given}, an input of this command: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    mark = out / OWNER
    if not mark.is_file():
        with contextlib.suppress(OSError):  # a read-only folder fails later, naming the file it could not write
            write_text_atomic(mark, command + "\n")  # under torchrun every rank marks: none reads a half-written mark
    return out


def _evidence(folder: Path) -> str:
    if (folder / OWNER).is_file():
        return f"{folder / OWNER} says so"
    return str(folder / _signed(folder)[0])


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


def publish(staging: Path, out: Path, names: Sequence[str], command: Optional[str] = None) -> None:
    """Moves a finished run's outputs from ``staging`` into ``out``; every
    other file ``command`` writes there (an earlier run's outputs, this run's
    checkpoints) is removed, so the folder holds this run's files only.  While
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
    for name in OUTPUTS.get(command, ()) if command else ():
        if name not in names:
            _remove(out / name)
    marker.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
