"""Downloads, only when the user asks (``ocnna-fast fetch NAME`` or
:func:`fetch`): the canonical CIFAR archives and pretrained checkpoints.

Each file is checked against a pinned sha256 before it is put in place.  A
download goes to ``NAME.part`` first and resumes from there (HTTP Range) when
it was interrupted; only a complete, verified file is renamed to its final
name, and an archive is extracted into a temporary folder that is renamed
into place when whole.  So a half-finished fetch is never taken as data.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from .places import cache_dir

__all__ = ["Remote", "REMOTES", "fetch", "download", "sha256_of"]

PathLike = Union[str, os.PathLike]
_AKAMASTER = (
    "https://github.com/akamaster/pytorch_resnet_cifar10/raw/"
    "d5489e8995e81e91ce6b1d69dcc98ad579b0b153/pretrained_models/"
)
_TORONTO = "https://www.cs.toronto.edu/~kriz/"
_MARKER = ".ocnna-fetch.json"


@dataclass(frozen=True)
class Remote:
    """One downloadable file: where it comes from, what it must hash to, and
    where it goes inside a data place (``folder/filename``, or for an archive,
    the folder ``extracts_to`` it unpacks into)."""

    url: str
    sha256: str
    size: int
    folder: str = ""
    extracts_to: Optional[str] = None
    contents: Tuple[str, ...] = ()  # files an extracted folder must hold to count as whole

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def relpath(self) -> str:
        """What the data readers look for, relative to a data place."""
        if self.extracts_to:
            return self.extracts_to
        return f"{self.folder}/{self.filename}" if self.folder else self.filename


def _resnet(name: str, sha: str, size: int) -> Remote:
    return Remote(_AKAMASTER + f"{name}-{sha[:8]}.th", sha, size, folder="resnet-cifar10-akamaster")


# sha256 and sizes: the CIFAR archives as published by their authors (the
# md5 torchvision pins agree); the checkpoints as in data/README.md
REMOTES: Dict[str, Remote] = {
    "cifar10": Remote(
        _TORONTO + "cifar-10-python.tar.gz",
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        170_498_071,
        extracts_to="cifar-10-batches-py",
        contents=("batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6))),
    ),
    "cifar100": Remote(
        _TORONTO + "cifar-100-python.tar.gz",
        "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
        169_001_437,
        extracts_to="cifar-100-python",
        contents=("meta", "train", "test"),
    ),
    "resnet20": _resnet("resnet20", "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", 1_099_231),
    "resnet32": _resnet("resnet32", "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850", 1_890_043),
    "resnet44": _resnet("resnet44", "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4", 2_680_855),
    "resnet56": _resnet("resnet56", "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367", 3_471_733),
}


def sha256_of(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(
    url: str,
    dest: PathLike,
    sha256: str,
    size: Optional[int] = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Downloads ``url`` to ``dest`` through ``dest.part`` (resuming one an
    interrupted call left) and renames it only when its sha256 is ``sha256``.

    ``size`` (the pinned size) bounds the download: a server that sends more
    is refused there, so an endless stream never fills the disk.  ``timeout``
    is the stall limit in seconds.  A file that does not match is deleted
    (``ValueError``); a refused request (HTTP 4xx/5xx) or an unwritable folder
    is an ``OSError`` saying so; a transfer cut short keeps the ``.part`` and
    says that the same fetch resumes."""
    dest = Path(dest)
    part, have = _partial(dest, size)
    request = urllib.request.Request(url, headers={"User-Agent": "ocnna-fast"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    bar = None
    try:
        response, have = _open(request, url, part, have, size, timeout)
        with response if response is not None else _Empty() as r:
            if response is not None and have and r.status != 206:
                have = 0  # the server ignored the range: take the whole file again
            total = size or (have + int(r.headers.get("Content-Length", 0) or 0)) or None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name)
            _transfer(r, part, have, size, bar, url)
            # a dropped connection can look like a normal end of the body
            got = part.stat().st_size
            if total is not None and got < total:
                raise OSError(f"the connection closed after {got} of {total} bytes")
    except _TooLong as exc:
        part.unlink(missing_ok=True)
        raise ValueError(f"{exc}; the download was removed (a wrong --base-url?)") from None
    except _Refused as exc:
        raise OSError(str(exc)) from exc.__cause__
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        kept = part.stat().st_size if part.exists() else 0
        raise OSError(
            f"download of {url} failed ({exc}); {kept} bytes kept in {part}: run the same fetch again to resume"
        ) from exc
    finally:
        if bar is not None:
            bar.close()
    got = sha256_of(part)
    if got != sha256:
        part.unlink()
        raise ValueError(
            f"{url}: sha256 {got} does not match the pinned {sha256}; the download was removed "
            "(a changed or corrupted file upstream, or a wrong --base-url)"
        )
    os.replace(part, dest)
    return dest


def _partial(dest: Path, size: Optional[int]) -> Tuple[Path, int]:
    """``dest``'s ``.part`` file and the bytes of it a download continues
    (none when it is longer than the file: not a prefix of it)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create {dest.parent} ({exc.strerror or exc}); choose another --data-dir") from exc
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    return part, have


def _open(request, url: str, part: Path, have: int, size: Optional[int], timeout: float):
    """The response to ``request`` (``None``: HTTP 416 on a whole ``.part``)
    and the bytes of ``part`` it continues.  A server that answers 416 to the
    resume of a short ``.part`` will never resume it: the part is removed,
    saying so, and the file requested again from the start."""
    try:
        return urllib.request.urlopen(request, timeout=timeout), have
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not have:  # 416: nothing left to send, the .part is whole
            raise _Refused(f"{url}: the server answered HTTP {exc.code} {exc.reason}") from exc
    if size is None or have >= size:
        return None, have
    print(
        f"{url} refuses to resume {part} at byte {have} (HTTP 416): removed it, downloading from the start",
        file=sys.stderr,
    )
    part.unlink()
    whole = urllib.request.Request(url, headers={"User-Agent": "ocnna-fast"})
    return urllib.request.urlopen(whole, timeout=timeout), 0


def _transfer(response: Any, part: Path, have: int, size: Optional[int], bar: Any, url: str) -> None:
    """Appends the body of ``response`` to ``part`` (which holds ``have``
    bytes), never past the pinned ``size``."""
    try:
        f = open(part, "ab" if have else "wb")
    except OSError as exc:
        raise _Refused(f"cannot write {part} ({exc.strerror or exc}); choose another --data-dir") from exc
    with f:
        got = have
        while True:
            block = response.read(1 << 16)
            if not block:
                break
            got += len(block)
            if size is not None and got > size:
                raise _TooLong(f"{url} sent more than the pinned {size} bytes: not the file asked for")
            f.write(block)
            if bar is not None:
                bar.update(len(block))


class _Refused(Exception):
    """A request the server refused, or a file that cannot be written: trying again will not help."""


class _TooLong(Exception):
    """More bytes than the pinned size."""


class _Empty:
    """Stands in for a response with no body (HTTP 416 on a finished .part)."""

    status = 206
    headers: Dict[str, str] = {}

    def read(self, n: int = -1) -> bytes:
        return b""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _safe_extract(archive: Path, into: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for m in tar.getmembers():
            target = (into / m.name).resolve()
            if not str(target).startswith(str(into.resolve()) + os.sep) or m.issym() or m.islnk() or m.isdev():
                raise ValueError(
                    f"{archive}: refusing the archive member {m.name!r} (outside the target, a link or a device)"
                )
        tar.extractall(into)


def fetch(
    name: str, data_dir: Optional[PathLike] = None, base_url: Optional[str] = None, progress: bool = True
) -> Path:
    """Downloads the item ``name`` (one of :data:`REMOTES`) into ``data_dir``
    (default: the user cache) unless it is already there, and returns its
    path, the one the data readers find.  ``base_url`` (or
    ``$OCNNA_FETCH_BASE_URL``) replaces the folder part of the URL, e.g. a
    mirror or a local server."""
    if name not in REMOTES:
        raise ValueError(f"unknown fetch item {name!r}; choose from {', '.join(REMOTES)}")
    remote = REMOTES[name]
    place = Path(data_dir) if data_dir is not None else cache_dir()
    base = base_url or os.environ.get("OCNNA_FETCH_BASE_URL")
    url = f"{base.rstrip('/')}/{remote.filename}" if base else remote.url
    target = place / remote.relpath
    if remote.extracts_to is None:
        if target.is_file():
            if sha256_of(target) == remote.sha256:
                return target
            raise ValueError(f"{target} exists but its sha256 is not the pinned one; remove it and fetch again")
        return download(url, target, remote.sha256, remote.size, progress=progress)
    if target.is_dir():
        missing = [f for f in remote.contents if not (target / f).is_file()]
        if not missing:
            return target  # extracted earlier (or the user's own copy of the same layout)
        raise ValueError(
            f"{target} exists but is not a whole {name} (missing {', '.join(missing[:3])}); "
            "remove the folder and fetch again"
        )
    downloads = place / "downloads"
    archive = download(url, downloads / remote.filename, remote.sha256, remote.size, progress=progress)
    tmp = Path(tempfile.mkdtemp(prefix=f".{remote.extracts_to}-", dir=place))
    try:
        _safe_extract(archive, tmp)
        missing = [f for f in remote.contents if not (tmp / remote.extracts_to / f).is_file()]
        if not (tmp / remote.extracts_to).is_dir() or missing:
            raise ValueError(f"{archive} does not hold a whole {remote.extracts_to}/ (missing {missing[:3]})")
        (tmp / remote.extracts_to / _MARKER).write_text(json.dumps({"url": url, "sha256": remote.sha256}))
        os.replace(tmp / remote.extracts_to, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    archive.unlink()  # the extracted folder is what is read; the archive is 170 MB
    return target


def fetch_names() -> List[str]:
    return list(REMOTES)
