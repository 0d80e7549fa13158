"""What the width search costs, and what it chooses: ``ocnna-fast prune``
to a budget with each ``--search`` (``full``: every candidate a whole pass
over every image; ``staged``: from its first masked layer, the local
search's moves screened), on several data seeds (``--seed`` draws the
scoring and calibration images), stopped after BatchNorm re-estimation.

Per run: the search's cost in forward-pass equivalents over its calibration
images (``sensitivity.passes`` of report.json), its seconds, the candidates
measured and screened, and the accuracy after BatchNorm.  Runs are kept in
``--out`` (one folder each, report.json and report.md; the pruned weights and
scores are deleted), so a stopped benchmark resumes; the table is printed at the end.

    python benchmarks/search_cost.py resnet56 --target macs=0.5 --criterion ocnna-rms --seeds 0 1 2
    python benchmarks/search_cost.py mobilenet_v1_075_imagenet --dataset imagenet-sample --target macs=0.8 \\
        --criterion l1 --seeds 0 1 2 -- --score-images 500 --bn-images 500 --batch-size 50
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from statistics import mean

HERE = Path(__file__).resolve().parent


def run(arch: str, a: argparse.Namespace, search: str, seed: int, extra) -> dict:
    out = Path(a.out) / f"{arch}-{a.target.replace('=', '')}-{search}-s{seed}"
    report = out / "report.json"
    if not report.is_file():
        cmd = [sys.executable, "-m", "ocnna_fast.cli", "prune", "--arch", arch, "--dataset", a.dataset]
        cmd += ["--target", a.target, "--criterion", a.criterion, "--search", search, "--seed", str(seed)]
        cmd += ["--eval-images", str(a.eval_images), "--finetune-epochs", "0", "--latency-repeats", "0"]
        cmd += ["--no-progress", "--out", str(out), *extra]
        print("$", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)
        shutil.rmtree(out / "pruned", ignore_errors=True)  # the weights: megabytes nobody reads here
        for name in ("scores.safetensors", ".ocnna-fast.lock"):
            (out / name).unlink(missing_ok=True)
    return row(report)


def row(report: Path) -> dict:
    """One run's figures, from its report.json."""
    r = json.loads(report.read_text())
    s = r["sensitivity"]
    search = (s.get("search") or {}).get("how") or r["settings"]["command"].split("--search ")[1].split()[0]
    return {
        "search": search,
        "seed": r["settings"]["seed"],
        "passes": s["passes"],
        "measured": s["evaluations"],
        "screened": s.get("screened", 0),
        "seconds": r["allocation_seconds"],
        "after_bn": r["pruned_accuracy_before_finetune"],
        "reached": r["reached"],
        "widths": {k: v[1] for k, v in r["widths"].items()},
    }


def rows_in(folder: Path) -> list:
    """Every run kept in ``folder``, full before staged, by seed."""
    rows = [row(p) for p in sorted(Path(folder).glob("*/report.json"))]
    return sorted(rows, key=lambda r: (r["search"] != "full", r["seed"]))


def table(rows) -> str:
    lines = [
        "| search | seeds | forward passes, mean | seconds, mean | measured + screened | after BN, mean (range) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for search in dict.fromkeys(r["search"] for r in rows):
        rs = [r for r in rows if r["search"] == search]
        acc = [r["after_bn"] for r in rs]
        lines.append(
            f"| {search} | {len(rs)} | {mean(r['passes'] for r in rs):.1f} | {mean(r['seconds'] for r in rs):.0f} "
            f"| {mean(r['measured'] for r in rs):.0f} + {mean(r['screened'] for r in rs):.0f} "
            f"| {mean(acc):.2f} ({min(acc):.2f}-{max(acc):.2f}) |"
        )
    full = {r["seed"]: r for r in rows if r["search"] == "full"}
    for search in dict.fromkeys(r["search"] for r in rows if r["search"] != "full"):
        pairs = [(full[r["seed"]], r) for r in rows if r["search"] == search and r["seed"] in full]
        if pairs:  # on the seeds both ran: the same images
            ratio = sum(f["passes"] for f, _ in pairs) / sum(r["passes"] for _, r in pairs)
            same = sum(f["widths"] == r["widths"] for f, r in pairs)
            lines.append(
                f"\n{search}: {ratio:.2f}x fewer forward passes than full on seed(s) "
                f"{', '.join(str(r['seed']) for _, r in pairs)}; the same widths on {same} of {len(pairs)}"
            )
    lines.append("\n(Seconds depend on the machine and on what else it runs.)")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("arch")
    p.add_argument("--dataset", default="cifar10-jpeg")
    p.add_argument("--target", default="macs=0.5")
    p.add_argument("--criterion", default="ocnna-rms")
    p.add_argument("--searches", nargs="+", default=["full", "staged"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--out", default=str(HERE / "results" / "search-cost"))
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = p.parse_args(argv[:cut])
    extra = argv[cut + 1 :]  # after --: more prune options, the same for every run
    rows = [run(a.arch, a, search, seed, extra) for search in a.searches for seed in a.seeds]
    print(table(rows))


if __name__ == "__main__":
    main()
