"""Result types: per-layer scores and the whole-model ``Scores`` mapping.

``Scores.save`` writes safetensors (tensors plus a JSON header), a format that
cannot execute code when loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Mapping, Optional, Union

import torch

from .. import _native
from .._util import validate
from .._util.atomic import save_tensors
from .taps import TAPS

__all__ = ["LayerScores", "Scores"]

_FORMAT = "ocnna-fast-scores"
_FORMAT_VERSION = 2  # 2: a sha256 of the contents in the metadata
_META_KEYS = ("format", "version", "layers", "counts", "n_components", "tap", "statistic", "sha256")


@dataclass(frozen=True)
class LayerScores:
    """OCNNA statistics of one conv layer's filters (all float64, on the CPU).

    ``score`` is the coefficient of variation ``std / mean`` of the per-image
    PCA energies (higher = more important); ``dead`` marks filters whose maps
    had zero variance on every image (they score 0).
    """

    score: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    count: int
    dead: torch.Tensor

    @property
    def num_channels(self) -> int:
        return int(self.score.numel())

    def __repr__(self) -> str:
        return (
            f"LayerScores(channels={self.num_channels}, images={self.count}, "
            f"dead={int(self.dead.sum())}, score=[{float(self.score.min()):.4g}.."
            f"{float(self.score.max()):.4g}])"
        )


class Scores(Mapping[str, LayerScores]):
    """Mapping from a conv's qualified module name to its ``LayerScores``."""

    def __init__(
        self,
        layers: Mapping[str, LayerScores],
        *,
        n_components: Union[None, int, float] = None,
        tap: str = "conv_output",
        statistic: str = "energy",
    ) -> None:
        self._layers: Dict[str, LayerScores] = dict(layers)
        self.n_components = n_components
        self.tap = tap
        self.statistic = statistic

    def __getitem__(self, name: str) -> LayerScores:
        return self._layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __repr__(self) -> str:
        return (
            f"Scores({len(self)} layers, n_components={self.n_components!r}, tap={self.tap!r}, "
            f"statistic={self.statistic!r})"
        )

    # ------------------------------------------------------------- storage --
    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the scores to ``path`` as safetensors, atomically, with a
        sha256 of the contents that ``load`` checks."""
        names = list(self._layers)
        tensors: Dict[str, torch.Tensor] = {}
        for i, name in enumerate(names):
            ls = self._layers[name]
            tensors[f"{i}.score"] = ls.score.contiguous()
            tensors[f"{i}.mean"] = ls.mean.contiguous()
            tensors[f"{i}.std"] = ls.std.contiguous()
            tensors[f"{i}.dead"] = ls.dead.to(torch.uint8).contiguous()
        meta = {
            "format": _FORMAT,
            "version": str(_FORMAT_VERSION),
            "layers": json.dumps(names),
            "counts": json.dumps([self._layers[n].count for n in names]),
            "n_components": json.dumps(self.n_components),
            "tap": self.tap,
            "statistic": self.statistic,
        }
        meta["sha256"] = validate.tensors_sha256(tensors, list(meta.items()))
        save_tensors(tensors, path, metadata=meta)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Scores":
        """Reads scores written by ``save``.  A foreign, damaged or tampered
        file is a ``ValueError``: the digest, the layer list (unique names,
        one positive image count each), ``n_components``, the tap, the exact
        set of tensors and every value (finite, non-negative, consistent
        shapes and dead masks) are checked."""
        from safetensors import safe_open

        path = os.fspath(path)
        try:
            with safe_open(path, framework="pt") as f:
                meta: Optional[Dict[str, Any]] = f.metadata()
                if not meta or meta.get("format") != _FORMAT:
                    raise ValueError(f"{path} is not an ocnna-fast scores file")
                if meta.get("version") != str(_FORMAT_VERSION):
                    raise ValueError(f"{path}: unsupported scores format version {meta.get('version')}")
                validate.exact_keys(meta, _META_KEYS, f"{path}: metadata")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except ValueError:
            raise
        except Exception as exc:  # safetensors raises its own error types on damage
            raise ValueError(f"cannot read scores from {path}: {exc}") from exc
        validate.check_digest(tensors, meta, path)
        try:
            names, counts = json.loads(meta["layers"]), json.loads(meta["counts"])
            n_components = json.loads(meta["n_components"])
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: malformed metadata ({exc})") from exc
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path}: the layer list must be a list of names")
        if len(set(names)) != len(names):
            raise ValueError(f"{path}: duplicate layer names")
        if not isinstance(counts, list) or len(counts) != len(names):
            raise ValueError(f"{path}: {len(names)} layers but {counts!r} image counts")
        if _native.canonical_n_components(n_components) != n_components:
            raise ValueError(f"{path}: n_components {n_components!r} is not in canonical form")
        if meta["tap"] not in TAPS:
            raise ValueError(f"{path}: unknown tap {meta['tap']!r}")
        if meta["statistic"] not in _native.STATISTICS:
            raise ValueError(f"{path}: unknown statistic {meta['statistic']!r}")
        validate.exact_keys(
            tensors,
            [f"{i}.{f}" for i in range(len(names)) for f in ("score", "mean", "std", "dead")],
            f"{path}: tensors",
        )
        layers = {}
        for i, (name, count) in enumerate(zip(names, counts)):
            score, mean, std, dead, count = validate.layer_scores(
                tensors[f"{i}.score"],
                tensors[f"{i}.mean"],
                tensors[f"{i}.std"],
                tensors[f"{i}.dead"],
                count,
                f"{path}: layer {name!r}",
            )
            layers[name] = LayerScores(score=score, mean=mean, std=std, count=count, dead=dead)
        return cls(layers, n_components=n_components, tap=meta["tap"], statistic=meta["statistic"])


def check_image_count(results: Dict[str, "LayerScores"]) -> None:
    """At least 2 images behind every layer's scores: over one image every
    filter's spread, and so its score, is 0 (the command line refuses it too)."""
    if results and min(ls.count for ls in results.values()) < 2:
        raise ValueError("score() needs at least 2 images: a filter's score is the spread of its energies over them")
