"""What the width search costs, and what it chooses: ``ocnna-fast prune``
to a budget with each ``--search`` (``full``: every candidate a whole pass
over every image; ``staged``: from its first masked layer; ``one-pass``: one
pass per candidate, the local search's moves from where they differ), each
optionally with prune flags of its own (``"one-pass --refine-steps 40"``),
on several data seeds (``--seed`` draws the scoring and calibration
images), stopped after BatchNorm re-estimation.

Per run: the search's cost in forward-pass equivalents (``sensitivity.passes``
of report.json) and in image-forwards (comparable across searches whose pass
stands for different image counts), its seconds, the candidates measured and
screened, and the accuracy after BatchNorm.  Runs are kept in ``--out`` (one
folder each, report.json and report.md; the pruned weights and scores are
deleted), so a stopped benchmark resumes; the table is printed at the end.

    python benchmarks/search_cost.py resnet56 --target macs=0.5 --seeds 0 1 2 --searches full one-pass
    python benchmarks/search_cost.py "torchvision.models:resnet50(num_classes=10)" --searches full one-pass --seeds 0
    python benchmarks/search_cost.py mobilenet_v1_075_imagenet --dataset imagenet-sample --target macs=0.8 \\
        --criterion l1 --seeds 0 1 2 -- --score-images 500 --bn-images 500 --batch-size 50
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from statistics import mean

from common import parse_with_prune_flags

from ocnna_fast.budget.search import ALLOCATION_MEMO, CURVE_MEMO
from ocnna_fast.models import factory_name

HERE = Path(__file__).resolve().parent


def run(arch: str, a: argparse.Namespace, variant: str, seed: int, extra) -> dict:
    """One prune run: ``variant`` is a search (``one-pass``) or a search with
    its own prune flags (``"one-pass --refine-steps 40"``)."""
    search, *own = variant.split()
    extra = [*extra, *own]
    tag = ""
    for flag, letter in (("--refine-steps", "r"), ("--curve-share", "c"), ("--curves", "")):
        if flag in extra:  # the search's own settings name the run's folder
            tag += f"-{letter}{extra[extra.index(flag) + 1]}"
    user = ":" in arch  # a module:factory spec (``--model``), named for its factory
    name = factory_name(arch) if user else arch
    out = Path(a.out) / f"{name}-{a.target.replace('=', '')}-{search}{tag}-s{seed}"
    report = out / "report.json"
    if not report.is_file():
        # an interrupted run's memo would serve losses whose cost this run would not count
        for name in (ALLOCATION_MEMO, CURVE_MEMO):
            (out / name).unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "ocnna_fast.cli", "prune", "--model" if user else "--arch", arch]
        cmd += ["--dataset", a.dataset]
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
    if s.get("resumed"):  # its passes leave out what the earlier run measured
        raise SystemExit(
            f"{r['settings']['command']}: resumed an earlier run's search ({s['resumed']} losses from its memo), "
            "so its cost is understated; delete its folder and run it again"
        )
    how = s.get("search") or {}
    search = how.get("how") or r["settings"]["command"].split("--search ")[1].split()[0]
    if how.get("steps", 100) != 100:
        search += f", {how['steps']} moves"
    if "curve_images" in s:
        search += f", curves on {s['curve_images']} images"
    if s.get("curves", "measured") != "measured":
        search += f", {s['curves']} curves"
    words = shlex.split(r["settings"]["command"])  # a factory spec is quoted there
    model = next((words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--arch", "--model")), "resnet56")
    return {
        "search": search,
        "model": model,
        "seed": r["settings"]["seed"],
        "passes": s["passes"],
        # image-forwards, comparable across searches whose pass stands for different image counts
        "forwards": s["passes"] * _pass_images(r),
        "measured": s["evaluations"],
        "screened": s.get("screened", 0),
        "seconds": r["allocation_seconds"],
        "base": r["base_accuracy"],
        "after_bn": r["pruned_accuracy_before_finetune"],
        "reached": r["reached"],
        "widths": {k: v[1] for k, v in r["widths"].items()},
    }


def _pass_images(r: dict) -> int:
    """The images one pass stands for: recorded, or for a report that
    predates the record, the calibration images (at most 512), one-pass's
    evaluation images (the scoring images, at most 512)."""
    s = r["sensitivity"]
    if "pass_images" in s:
        return int(s["pass_images"])
    words = r["settings"]["command"].split()
    flag = "--score-images" if (s.get("search") or {}).get("how") == "one-pass" else "--bn-images"
    given = int(words[words.index(flag) + 1]) if flag in words else 1000
    return min(given, 512)


def rows_in(folder: Path) -> list:
    """Every run kept in ``folder``, full before staged, by seed."""
    rows = [row(p) for p in sorted(Path(folder).glob("*/report.json"))]
    return sorted(rows, key=lambda r: (r["search"] != "full", r["seed"]))


def baseline_rows(baseline, rows) -> list:
    """The full searches of the ``baseline`` folder (None: none) on the seeds ``rows`` ran."""
    seeds = {r["seed"] for r in rows}
    return [r for r in rows_in(Path(baseline)) if r["search"] == "full" and r["seed"] in seeds] if baseline else []


def table(rows) -> str:
    lines = [
        "| search | seeds | forward passes, mean | image-forwards, mean | seconds, mean | measured + screened "
        "| after BN, mean (range) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    searches = list(dict.fromkeys(r["search"] for r in rows))
    searches.sort(key=lambda n: -mean(r["forwards"] for r in rows if r["search"] == n))  # the costliest first
    for search in searches:
        rs = [r for r in rows if r["search"] == search]
        acc = [r["after_bn"] for r in rs]
        lines.append(
            f"| {search} | {len(rs)} | {mean(r['passes'] for r in rs):.1f} | {mean(r['forwards'] for r in rs):,.0f} "
            f"| {mean(r['seconds'] for r in rs):.0f} "
            f"| {mean(r['measured'] for r in rs):.0f} + {mean(r['screened'] for r in rs):.0f} "
            f"| {mean(acc):.2f} ({min(acc):.2f}-{max(acc):.2f}) |"
        )
    for baseline in [n for n in searches if n.startswith("full")]:  # full, or full with its own moves
        full = {r["seed"]: r for r in rows if r["search"] == baseline}
        for search in [n for n in searches if not n.startswith("full")]:
            pairs = [(full[r["seed"]], r) for r in rows if r["search"] == search and r["seed"] in full]
            if pairs:  # on the seeds both ran: the same images
                ratio = sum(f["forwards"] for f, _ in pairs) / sum(r["forwards"] for _, r in pairs)
                same = sum(f["widths"] == r["widths"] for f, r in pairs)
                lines.append(
                    f"\n{search}: {ratio:.2f}x fewer image-forwards than {baseline} on seed(s) "
                    f"{', '.join(str(r['seed']) for _, r in pairs)}; the same widths on {same} of {len(pairs)}"
                )
    lines.append("\n(Seconds depend on the machine and on what else it runs.)")
    return "\n".join(lines)


def _convs(model: str) -> int:
    """The model's conv layers (built untrained: only its shape counts)."""
    from torch import nn

    from ocnna_fast.models import build

    return sum(isinstance(m, nn.Conv2d) for m in build(model).modules())


def depth_table(runs) -> str:
    """How the search's cost grows with the network: per model, ``(rows,
    search, about)``: its runs (lists of :func:`row`), the search that
    stands for the default there and a word on it; the full search against
    that one in forward passes of that network, on the seeds both ran."""
    lines = [
        "| model | conv layers | groups searched | seeds | full: forward passes | default: forward passes "
        "| full / default (image-forwards) | default: passes per group | the default's runs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rows, search, about in runs:
        full = {r["seed"]: r for r in rows if r["search"] == "full"}
        pairs = [(full[r["seed"]], r) for r in rows if r["search"] == search and r["seed"] in full]
        if not pairs:
            continue
        model, groups = pairs[0][1]["model"], len(pairs[0][1]["widths"])
        passes = [mean(x["passes"] for x in side) for side in zip(*pairs)]
        ratio = sum(f["forwards"] for f, _ in pairs) / sum(d["forwards"] for _, d in pairs)
        lines.append(
            f"| {model} | {_convs(model)} | {groups} | {len(pairs)} | {passes[0]:.1f} | {passes[1]:.1f} "
            f"| {ratio:.2f}x | {passes[1] / groups:.2f} | {about} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("arch")
    p.add_argument("--dataset", default="cifar10-jpeg")
    p.add_argument("--target", default="macs=0.5")
    p.add_argument("--criterion", default="ocnna-rms")
    p.add_argument(
        "--searches",
        nargs="+",
        default=["full", "staged"],
        help='searches to run, each optionally with its own prune flags: full "one-pass --refine-steps 40"',
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--out", default=str(HERE / "results" / "search-cost"))
    p.add_argument(
        "--baseline",
        help="a folder of this script's runs whose full searches the table compares with (runs measured at an "
        "earlier commit: the cost and accuracy the search had before a change)",
    )
    a, extra = parse_with_prune_flags(p, sys.argv[1:])
    rows = [run(a.arch, a, search, seed, extra) for search in a.searches for seed in a.seeds]
    print(table(rows + baseline_rows(a.baseline, rows)))


if __name__ == "__main__":
    main()
