"""The width search under ``torchrun``: one process with N threads against N
processes of one thread each, the same ``ocnna-fast prune --target`` job
(stopped after BatchNorm re-estimation), side by side on one machine.

Prints each run's seconds choosing widths, candidates measured per process,
the widths (equal, or the run is wrong) and the accuracy after BatchNorm;
writes the reports into ``--out`` (one folder per run; a finished run is
read again, not rerun).

    python benchmarks/torchrun_search.py resnet20 --target macs=0.5 --processes 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import parse_with_prune_flags

HERE = Path(__file__).resolve().parent


def run(name: str, launcher: list, threads: int, a: argparse.Namespace, extra: list) -> dict:
    out = Path(a.out) / name
    report = out / "report.json"
    if not report.is_file():
        cmd = [*launcher, "prune", "--arch", a.arch, "--target", a.target, "--finetune-epochs", "0"]
        cmd += ["--latency-repeats", "0", "--no-progress", "--threads", str(threads), "--out", str(out), *extra]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=env)
    r = json.loads(report.read_text())
    s = r["sensitivity"]
    return {
        "run": name,
        "seconds": r["allocation_seconds"],
        "per_process": s.get("evaluations_per_process") or [s["evaluations"]],
        "widths": {k: v[1] for k, v in r["widths"].items()},
        "after_bn": r["pruned_accuracy_before_finetune"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("arch")
    p.add_argument("--target", default="macs=0.5")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--out", default=str(HERE / "results" / "torchrun-search"))
    a, extra = parse_with_prune_flags(p, sys.argv[1:])
    n = a.processes
    one = run("one-process", [sys.executable, "-m", "ocnna_fast.cli"], n, a, extra)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)]
    many = run(f"{n}-processes", [*torchrun, "-m", "ocnna_fast.cli"], 1, a, extra)
    print("| run | seconds choosing widths | candidates measured per process | after BN |")
    print("| --- | --- | --- | --- |")
    for r in (one, many):
        print(f"| {r['run']} | {r['seconds']:.0f} | {', '.join(map(str, r['per_process']))} | {r['after_bn']:.2f} |")
    print(f"\nthe same widths: {one['widths'] == many['widths']}; time ratio {one['seconds'] / many['seconds']:.2f}x")


if __name__ == "__main__":
    main()
