"""The results file of a benchmark suite (``results.json``): the settings
its rows depend on and the rows so far.  A suite resumes from it only when
every setting matches (results of two budgets never mix), and only from
rows that are whole, of the right types and unaltered: each row is written
with the SHA-256 of its fields (``row_sha256``), so a damaged or edited
value (a k of 40 that reads 50, an accuracy changed by hand) is refused
rather than resumed as a measurement.  Deleting a row is fine: its cell
runs again."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

from torch import nn

from ..recovery.distill import state_sha256
from ..recovery.recover import has_batchnorm

__all__ = [
    "OPTION_OF",
    "model_config",
    "load_rows",
    "sealed",
    "finite_or_none",
    "mean",
    "fmt",
    "run_cells",
    "SCHEMA",
    "document",
]

DIGEST = "row_sha256"
# the layout of results.json; 2: a method string takes prune's flags, the
# recovery is named as the flags name it, a base latency is its median in ms
# (schema 1 files are upgraded on read)
SCHEMA = 2
# schema 1's names of the recovery after surgery, and today's
RECOVERY_V1 = {
    "batchnorm-regression": "batchnorm+refit",
    "bias-compensation": "folded-mean",
    "folded-batchnorm": "folded-variance",
    "folded-regression": "folded-refit",
}

# the command-line option behind each setting a suite records
OPTION_OF = {
    "arch": "--arch/--model",
    "weights_sha256": "--weights/--model (the base model's weights)",
    "seed": "--seed (the images drawn)",
    "input_size": "--input-size",
    "latency_repeats": "--latency-repeats",
    "score_images": "--score-images",
    "bn_images": "--bn-images",
    "train_images": "--train-images",
    "eval_images": "--eval-images",
    "finetune_epochs": "--finetune-epochs",
    "batch_size": "--batch-size",
    "dataset": "--dataset",
    "scope": "--scope",
    "lr": "--lr",
    "round_to": "--round-to",
    "max_prune": "--max-prune",
    "sensitivity_images": "--sensitivity-images",
    "folded_correction": "--folded-correction",
}


def model_config(model: nn.Module, folded: str, refit: bool = False) -> Dict[str, Any]:
    """The settings a suite's rows depend on through its base model: the
    weights' SHA-256 and, for a model whose BatchNorm is folded into its
    convs, the correction its pruned copies get (``folded``); for one with
    BatchNorm, ``refit`` when asked (absent otherwise, as in suites written
    before it existed)."""
    config: Dict[str, Any] = {"weights_sha256": state_sha256(model)}
    if not has_batchnorm(model):
        config["folded_correction"] = folded
    elif refit:
        config["refit"] = True
    return config


def document(config: Dict[str, Any], base: Dict[str, Any], rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The contents of ``results.json``: the schema, what the rows depend on, the base model, the sealed rows."""
    return {"schema": SCHEMA, "config": config, "base": base, "rows": sealed(rows)}


def read_document(path: Path, upgrade: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None) -> Dict[str, Any]:
    """``results.json`` as today's schema: rows of an older one pass through
    ``upgrade`` (after their digests are checked); a newer one is refused."""
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); move it away to start afresh") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a results file (not a JSON object); move it away")
    schema = doc.get("schema", 1)
    if isinstance(schema, bool) or not isinstance(schema, int) or not 1 <= schema <= SCHEMA:
        raise ValueError(f"{path} has results schema {schema!r}; this ocnna-fast reads schemas 1 to {SCHEMA}")
    rows = _unsealed(path, doc.get("rows"))
    config, base = doc.get("config"), doc.get("base")
    if schema < SCHEMA:
        rows = [_recovery_v1(upgrade(r) if upgrade is not None else r) for r in rows]
        if isinstance(config, dict) and config.get("folded_correction") == "regression":
            config = dict(config, folded_correction="refit")
        if isinstance(base, dict):  # the criteria suite kept each base latency's spread: today, the median
            base = {k: v["median"] if isinstance(v, dict) and "median" in v else v for k, v in base.items()}
    return dict(doc, schema=SCHEMA, config=config, base=base, rows=rows)


def _recovery_v1(row: Dict[str, Any]) -> Dict[str, Any]:
    name = row.get("recalibration")
    return dict(row, recalibration=RECOVERY_V1[name]) if name in RECOVERY_V1 else row


def load_rows(
    path: Path,
    config: Dict[str, Any],
    row_ok: Callable[[Any], bool],
    key: Callable[[Dict[str, Any]], Hashable],
    upgrade: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None,
) -> List[Dict[str, Any]]:
    """The finished rows of an earlier run into the same folder, if its
    settings equal ``config`` (else a ValueError naming the options that
    differ); every row must pass ``row_ok`` and no ``key`` may repeat."""
    if not path.exists():
        return []
    doc = read_document(path, upgrade)
    theirs = doc.get("config") if isinstance(doc, dict) else None
    if theirs != config:
        theirs = theirs if isinstance(theirs, dict) else {}
        differ = sorted(OPTION_OF.get(k, k) for k in set(config) | set(theirs) if config.get(k) != theirs.get(k))
        raise ValueError(
            f"{path} holds results of other settings (differ in: {', '.join(differ)}); "
            "rerun with the same options to resume, or use another --out"
        )
    rows = doc["rows"]
    if not all(row_ok(r) for r in rows):
        raise ValueError(f"{path}: malformed rows (missing fields or values of the wrong type); move it away")
    if len({key(r) for r in rows}) != len(rows):
        raise ValueError(f"{path}: the same cell is listed twice; move it away to start afresh")
    return rows


def _digest(row: Dict[str, Any]) -> str:
    fields = {k: v for k, v in row.items() if k != DIGEST}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def sealed(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The rows as written to the file: each with the digest of its fields."""
    return [dict(r, **{DIGEST: _digest(r)}) for r in rows]


def _unsealed(path: Path, rows: Any) -> List[Dict[str, Any]]:
    """The rows without their digests, each checked against its fields.
    Files written before rows were sealed (no row has a digest) load as they
    are; a file where only some rows have one was damaged."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: malformed rows (not a list of objects); move it away")
    with_digest = [DIGEST in r for r in rows]
    if not any(with_digest):
        return rows
    bad = [i for i, r in enumerate(rows) if not with_digest[i] or r[DIGEST] != _digest(r)]
    if bad:
        raise ValueError(
            f"{path}: row(s) {', '.join(map(str, bad))} do not match their {DIGEST} (damaged or edited); "
            "delete those rows to run their cells again, or move the file away"
        )
    return [{k: v for k, v in r.items() if k != DIGEST} for r in rows]


def finite_or_none(row: Dict[str, Any], fields: Sequence[str]) -> bool:
    """Each field a finite number, or ``None`` for a step that did not run."""
    return all(
        row[f] is None or (not isinstance(row[f], bool) and isinstance(row[f], (int, float)) and math.isfinite(row[f]))
        for f in fields
    )


def mean(values: List[Optional[float]]) -> Optional[float]:
    v = [x for x in values if x is not None]
    return sum(v) / len(v) if v else None


def fmt(v: Optional[float], digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def run_cells(
    cells: Sequence[Tuple[Any, ...]],
    cell: Callable[..., Dict[str, Any]],
    save: Callable[[Dict[str, Any]], None],
    names: Sequence[str],
    progress: bool,
) -> None:
    """Runs each pending cell and saves after each (a stopped suite resumes
    from the last saved row); ``names`` label a cell's fields on the bar."""
    bar = None
    if progress and cells:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cells), desc="bench cells", unit="cell")
    try:
        for fields in cells:
            row = cell(*fields)
            save(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(**dict(zip(names, fields[:2])), acc_bn=row["acc_bn"])
    finally:
        if bar is not None:
            bar.close()
