"""The sensitivity allocation's memo (``allocation-losses.json``): every
measured loss, kept so a stopped search resumes, and trusted only when all of
it checks out.  A memo may spare measurements; it may never change a width:
a file for other weights, channel orders or images, a damaged or edited file
(its digest over the losses disagrees), or any value that is not a finite
non-negative float for a candidate this model can have, is set aside with
one line saying why, and every loss is measured again."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional, Set, Tuple, Union

from torch import nn

from .._util.atomic import write_text_atomic
from .._util.validate import tensors_sha256

__all__ = ["LossMemo", "fingerprint", "losses_digest"]

# a KL divergence summed in floating point can land a rounding error below zero
_ROUNDING = 1e-6


def fingerprint(model: nn.Module, orders: str, calibration, evaluation) -> str:
    """sha256 over what a candidate's loss depends on: the model's state,
    each group's channel order and its outputs (``orders``, as text), the
    calibration and evaluation images (``None``: the one-pass evaluator)."""
    images = {
        f"{part}.{i}": x
        for part, xs in (("calibration", calibration), ("evaluation", evaluation))
        for i, x in enumerate(xs or ())
    }
    meta = [("state", tensors_sha256(model.state_dict())), ("groups", orders), ("one_pass", str(calibration is None))]
    return tensors_sha256(images, meta)


def losses_digest(fingerprint: str, losses: Mapping[str, float], screened: Optional[Mapping[str, float]] = None) -> str:
    parts = [fingerprint, sorted(losses.items())] + ([sorted(screened.items())] if screened else [])
    body = json.dumps(parts, allow_nan=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _screen_key(share: float, key: str) -> str:
    return f"{share!r} {key}"


def _screened_candidate(key: str) -> str:
    """The candidate of a screened loss's key (``"SHARE CANDIDATE"``), its share checked."""
    share, _, candidate = key.partition(" ")
    try:
        value = float(share)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise ValueError(f"screened loss {key!r} does not start with a share in (0, 1)")
    return candidate


class LossMemo:
    """The measured losses of one evaluator, keyed by candidate (the JSON of
    its sorted ``(group root, channels removed)`` pairs), read from and
    written to ``path`` (``None``: kept in memory only).  ``widths`` gives
    each group's width, against which every stored candidate is checked."""

    def __init__(
        self, path: Optional[Union[str, os.PathLike]], fingerprint: str, widths: Mapping[str, int], write: bool = True
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.write = write
        self.fingerprint = fingerprint
        self.widths = dict(widths)
        self.losses: Dict[str, float] = {}
        self.screened: Dict[str, float] = {}
        self.note: Optional[str] = None  # why a file was set aside
        # the keys read from the file: losses an earlier run measured, whose cost this run does not count
        self.earlier: Set[str] = set()
        self.resumed = 0  # how many times such a loss was served
        if self.path is not None:
            if write:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_file():
                self._read()

    def get(self, key: str) -> Optional[float]:
        self.resumed += key in self.earlier
        return self.losses.get(key)

    def put(self, key: str, loss: float) -> None:
        self.losses[key] = float(loss)
        self._write()

    def get_screened(self, share: float, key: str) -> Optional[float]:
        """A loss measured on the first ``share`` of the images (a screen)."""
        key = _screen_key(share, key)
        self.resumed += key in self.earlier
        return self.screened.get(key)

    def put_screened(self, share: float, key: str, loss: float) -> None:
        self.screened[_screen_key(share, key)] = float(loss)
        self._write()

    def merge(self, losses: Mapping[str, float]) -> None:
        """Losses measured elsewhere (another process's share), kept as if measured here."""
        new = {k: float(v) for k, v in losses.items() if k not in self.losses}
        if new:
            self.losses.update(new)
            self._write()

    def _write(self) -> None:
        if self.path is not None and self.write:
            doc: Dict[str, object] = {"fingerprint": self.fingerprint, "losses": self.losses}
            if self.screened:
                doc["screened"] = self.screened
            doc["sha256"] = losses_digest(self.fingerprint, self.losses, self.screened)
            write_text_atomic(self.path, json.dumps(doc))

    def _read(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
            losses, screened = self._checked(doc)
        except (OSError, ValueError) as exc:
            self.note = f"{self.path}: {exc}; every loss is measured again"
            print(f"ocnna-fast: {self.note}", file=sys.stderr)
            return
        self.losses, self.screened = losses, screened
        self.earlier = set(losses) | set(screened)

    def _checked(self, doc) -> Tuple[Dict[str, float], Dict[str, float]]:
        if not isinstance(doc, dict) or not isinstance(doc.get("losses"), dict):
            raise ValueError("not an allocation memo")
        if doc.get("fingerprint") != self.fingerprint:
            raise ValueError("it was measured for other weights, channel orders or images")
        losses, screened = doc["losses"], doc.get("screened", {})
        if not isinstance(screened, dict):
            raise ValueError("its screened losses are not a mapping")
        if doc.get("sha256") != losses_digest(self.fingerprint, losses, screened):
            raise ValueError("damaged or edited: its losses do not match the digest it was saved with")
        for key, value in [*losses.items(), *screened.items()]:
            self._check_key(key if key in losses else _screened_candidate(key))
            if isinstance(value, bool) or not isinstance(value, float) or not math.isfinite(value):
                raise ValueError(f"loss {value!r} of {key} is not a finite float")
            if value < -_ROUNDING:
                raise ValueError(f"loss {value!r} of {key} is negative")
        return dict(losses), dict(screened)

    def _check_key(self, key: str) -> None:
        try:
            pairs = json.loads(key)
        except ValueError:
            raise ValueError(f"candidate {key!r} is not a list of (group, channels removed)") from None
        if not isinstance(pairs, list) or json.dumps(pairs) != key:
            raise ValueError(f"candidate {key!r} is not a list of (group, channels removed)")
        roots = [p[0] for p in pairs if isinstance(p, list) and len(p) == 2]
        if len(roots) != len(pairs) or roots != sorted(set(roots)):
            raise ValueError(f"candidate {key!r} is not a sorted list of distinct (group, channels removed)")
        for root, n in pairs:
            width = self.widths.get(root)
            if width is None:
                raise ValueError(f"candidate {key!r} names {root!r}, no group of this model")
            if isinstance(n, bool) or not isinstance(n, int) or not 0 < n < width:
                raise ValueError(f"candidate {key!r} removes {n!r} of {root!r}'s {width} channels")
