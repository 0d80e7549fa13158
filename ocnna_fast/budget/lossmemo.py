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
from typing import Dict, Mapping, Optional, Union

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


def losses_digest(fingerprint: str, losses: Mapping[str, float]) -> str:
    body = json.dumps([fingerprint, sorted(losses.items())], allow_nan=True)
    return hashlib.sha256(body.encode()).hexdigest()


class LossMemo:
    """The measured losses of one evaluator, keyed by candidate (the JSON of
    its sorted ``(group root, channels removed)`` pairs), read from and
    written to ``path`` (``None``: kept in memory only).  ``widths`` gives
    each group's width, against which every stored candidate is checked."""

    def __init__(self, path: Optional[Union[str, os.PathLike]], fingerprint: str, widths: Mapping[str, int]) -> None:
        self.path = Path(path) if path is not None else None
        self.fingerprint = fingerprint
        self.widths = dict(widths)
        self.losses: Dict[str, float] = {}
        self.note: Optional[str] = None  # why a file was set aside
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_file():
                self._read()

    def get(self, key: str) -> Optional[float]:
        return self.losses.get(key)

    def put(self, key: str, loss: float) -> None:
        self.losses[key] = float(loss)
        if self.path is not None:
            doc = {"fingerprint": self.fingerprint, "losses": self.losses}
            doc["sha256"] = losses_digest(self.fingerprint, self.losses)
            write_text_atomic(self.path, json.dumps(doc))

    def _read(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
            losses = self._checked(doc)
        except (OSError, ValueError) as exc:
            self.note = f"{self.path}: {exc}; every loss is measured again"
            print(f"ocnna-fast: {self.note}", file=sys.stderr)
            return
        self.losses = losses

    def _checked(self, doc) -> Dict[str, float]:
        if not isinstance(doc, dict) or not isinstance(doc.get("losses"), dict):
            raise ValueError("not an allocation memo")
        if doc.get("fingerprint") != self.fingerprint:
            raise ValueError("it was measured for other weights, channel orders or images")
        losses = doc["losses"]
        if doc.get("sha256") != losses_digest(self.fingerprint, losses):
            raise ValueError("damaged or edited: its losses do not match the digest it was saved with")
        for key, value in losses.items():
            self._check_key(key)
            if isinstance(value, bool) or not isinstance(value, float) or not math.isfinite(value):
                raise ValueError(f"loss {value!r} of {key} is not a finite float")
            if value < -_ROUNDING:
                raise ValueError(f"loss {value!r} of {key} is negative")
        return dict(losses)

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
