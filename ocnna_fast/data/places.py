"""Where data files are looked for, in one place.

The search order (README, "Where data is found"):

1. ``--data-dir`` (the ``data_dir`` argument), else ``$OCNNA_DATA_DIR``;
2. the repository's ``data/`` folder, when running from a checkout (an
   editable install, or any install run from inside the checkout);
3. the user cache, ``$XDG_CACHE_HOME/ocnna-fast`` or ``~/.cache/ocnna-fast``
   (where ``ocnna-fast fetch`` puts what it downloads);
4. ``shared/data`` beside the checkout or the current folder (the project's
   staging area for large optional files).

Every place has the same layout (``resnet-cifar10-akamaster/...``,
``cifar10-jpeg-yoongikim/...``, torchvision's ``cifar-10-batches-py/``...), so
one relative path names a file in all of them.  Nothing here downloads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Union

__all__ = ["cache_dir", "checkout_data_dir", "data_places", "find_data"]

PathLike = Union[str, os.PathLike]
_PACKAGE_NAME = 'name = "ocnna-fast"'


def cache_dir() -> Path:
    """The user cache folder of this package (it need not exist yet)."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "ocnna-fast"


def _is_checkout(folder: Path) -> bool:
    try:
        return _PACKAGE_NAME in (folder / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return False


def checkout_data_dir() -> Optional[Path]:
    """The ``data/`` folder of the checkout this code runs from: the source
    tree of an editable install, else the first checkout at or above the
    current folder (an installed package run from inside its clone)."""
    here = Path(__file__).resolve().parents[2]  # <checkout>/ocnna_fast/data/places.py
    candidates = [here, *(p for p in [Path.cwd().resolve(), *Path.cwd().resolve().parents])]
    for folder in candidates:
        if _is_checkout(folder) and (folder / "data").is_dir():
            return folder / "data"
    return None


def data_places(data_dir: Optional[PathLike] = None, existing_only: bool = True) -> List[Path]:
    """Every folder searched for data, first match wins (see the module
    docstring); folders that do not exist are left out (unless
    ``existing_only=False``), except an explicit ``data_dir``, which is
    always listed so an error can name it."""
    places: List[Path] = []
    explicit = data_dir if data_dir is not None else os.environ.get("OCNNA_DATA_DIR") or None
    if explicit is not None:
        places.append(Path(explicit))
    checkout = checkout_data_dir()
    if checkout is not None:
        places.append(checkout)
    places.append(cache_dir())
    repo = checkout.parent if checkout is not None else None
    for base in (repo, Path.cwd()):
        if base is not None:
            places += [base.parent / "shared" / "data", base / "shared" / "data"]
    seen, out = set(), []
    for i, p in enumerate(places):
        key = p.resolve() if p.exists() else p
        if key in seen or existing_only and (i > 0 or explicit is None) and not p.is_dir():
            continue
        seen.add(key)
        out.append(p)
    return out


def find_data(
    relpath: str, data_dir: Optional[PathLike] = None, what: Optional[str] = None, fetch_hint: Optional[str] = None
) -> Path:
    """The first existing ``place / relpath`` over :func:`data_places`.

    Raises ``FileNotFoundError`` naming every place searched, and how to get
    the file (``fetch_hint``) when one is known."""
    places = data_places(data_dir)
    for place in places:
        candidate = place / relpath
        if candidate.exists():
            return candidate
    looked = ", ".join(str(p) for p in places) or "(no data folder exists)"
    hint = f" Get it with `{fetch_hint}`, or point" if fetch_hint else " Point"
    raise FileNotFoundError(
        f"{what or relpath} not found: looked for {relpath} in {looked}.{hint} --data-dir (or "
        f"OCNNA_DATA_DIR) at a folder that holds it."
    )
