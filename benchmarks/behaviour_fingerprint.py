"""Fingerprints of what the commands produce, to show a change moved code
without changing behaviour: run it before and after on the installed package
and compare the two outputs (they must be equal, line for line).

    python benchmarks/behaviour_fingerprint.py /tmp/fp-before > before.txt
    ... change, reinstall ...
    python benchmarks/behaviour_fingerprint.py /tmp/fp-after > after.txt
    diff before.txt after.txt

Covers score, prune with ``--k``, prune with ``--target``, and a small bench of
each kind (criterion x k, method x target) on the shipped CIFAR-10 images, one
thread.  plan.json is hashed byte for byte, a safetensors file by its content
(tensors and metadata: the library writes metadata keys in no fixed order);
a suite's rows are hashed without what a clock measures (latency, seconds),
read as today's results schema.
``--hash-only`` hashes folders an earlier run left.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

SMALL = ["--arch", "resnet20", "--no-progress"]
JOB = [*SMALL, "--score-images", "64", "--eval-images", "100", "--finetune-epochs", "0", "--latency-repeats", "0"]
BENCH = [*SMALL, "--seeds", "0", "--score-images", "64", "--bn-images", "64", "--eval-images", "100"]
BENCH += ["--latency-repeats", "0", "--threads", "1"]
RUNS = {
    "score": ["score", *SMALL, "--images", "64"],
    "prune-k": ["prune", *JOB, "--k", "40", "--criterion", "ocnna", "--threads", "1"],
    "prune-target": [
        "prune",
        *JOB,
        "--target",
        "macs=0.5",
        "--criterion",
        "ocnna-rms",
        "--sensitivity-images",
        "16",
        "--threads",
        "1",
    ],
    "bench-k": ["bench", *BENCH, "--k", "40", "--criteria", "ocnna", "l1"],
    "bench-target": [
        "bench",
        *BENCH,
        "--target",
        "macs=0.5",
        "--methods",
        "uniform:l1",
        "sensitivity:l1,no-cap-search,refine-steps=0",
    ],
}
CLOCKED = ("latency", "seconds", "time", "elapsed", "row_sha256")  # a row's digest covers its seconds


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _unclocked(value):
    if isinstance(value, dict):
        return {k: _unclocked(v) for k, v in value.items() if not any(c in k for c in CLOCKED)}
    if isinstance(value, list):
        return [_unclocked(v) for v in value]
    return value


def _content(path: Path) -> bytes:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        meta = json.dumps(f.metadata() or {}, sort_keys=True).encode()
        return meta + b"".join(k.encode() + f.get_tensor(k).tobytes() for k in sorted(f.keys()))


def main(root: str, run: bool = True) -> None:
    base = Path(root)
    if run:
        shutil.rmtree(base, ignore_errors=True)
    for name, args in RUNS.items():
        out = base / name
        args = [*args, "--out", str(out)]
        if run:
            subprocess.run([sys.executable, "-m", "ocnna_fast.cli", *args], check=True, stdout=subprocess.DEVNULL)
        for path in sorted(out.rglob("*")):
            rel = path.relative_to(base)
            if path.suffix == ".safetensors":
                print(rel, _digest(_content(path)))
            elif path.name == "plan.json":
                print(rel, _digest(path.read_bytes()))
            elif path.name == "results.json":
                from ocnna_fast.bench.equal_cost import upgrade_row
                from ocnna_fast.bench.results_file import read_document

                rows = read_document(path, upgrade_row)["rows"]  # schema 1 rows under today's method names
                print(rel, "rows", len(rows), _digest(json.dumps(_unclocked(rows), sort_keys=True).encode()))


if __name__ == "__main__":
    folders = [a for a in sys.argv[1:] if a != "--hash-only"]
    main(folders[0] if folders else "/tmp/ocnna-fingerprint", run="--hash-only" not in sys.argv)
