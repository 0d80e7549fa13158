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

__all__ = ["LayerScores", "Scores"]

_FORMAT = "ocnna-fast-scores"
_FORMAT_VERSION = 1


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
    ) -> None:
        self._layers: Dict[str, LayerScores] = dict(layers)
        self.n_components = n_components
        self.tap = tap

    def __getitem__(self, name: str) -> LayerScores:
        return self._layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __repr__(self) -> str:
        return f"Scores({len(self)} layers, n_components={self.n_components!r}, tap={self.tap!r})"

    # ------------------------------------------------------------- storage --
    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the scores to ``path`` as safetensors (atomically: write, then rename)."""
        from safetensors.torch import save_file

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
        }
        path = os.fspath(path)
        tmp = f"{path}.tmp-{os.getpid()}"
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Scores":
        """Reads scores written by ``save``; a foreign or damaged file is a ``ValueError``."""
        from safetensors import safe_open

        path = os.fspath(path)
        try:
            with safe_open(path, framework="pt") as f:
                meta: Optional[Dict[str, Any]] = f.metadata()
                if not meta or meta.get("format") != _FORMAT:
                    raise ValueError(f"{path} is not an ocnna-fast scores file")
                if meta.get("version") != str(_FORMAT_VERSION):
                    raise ValueError(f"{path}: unsupported scores format version {meta.get('version')}")
                names = json.loads(meta["layers"])
                counts = json.loads(meta["counts"])
                layers = {}
                for i, (name, count) in enumerate(zip(names, counts)):
                    sc = f.get_tensor(f"{i}.score")
                    layers[name] = LayerScores(
                        score=sc,
                        mean=f.get_tensor(f"{i}.mean"),
                        std=f.get_tensor(f"{i}.std"),
                        count=int(count),
                        dead=f.get_tensor(f"{i}.dead").bool(),
                    )
                    if not all(t.shape == sc.shape for t in (layers[name].mean, layers[name].std)):
                        raise ValueError(f"{path}: inconsistent shapes for layer {name!r}")
                return cls(layers, n_components=json.loads(meta["n_components"]), tap=meta.get("tap", "conv_output"))
        except ValueError:
            raise
        except Exception as exc:  # safetensors raises its own error types on damage
            raise ValueError(f"cannot read scores from {path}: {exc}") from exc
