"""Writes BENCHMARKS.md from the results the manifest (benchmarks/suites.json)
lists, in its order (nothing is typed by hand).

    python benchmarks/benchmarks_md.py

Each suite folder is one `ocnna-fast bench` run; its results.json holds the
settings and the cells, its `command.txt` (written by `ocnna-fast bench`) the
command, which `python benchmarks/suites.py run NAME` reruns.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from ocnna_fast.bench.results_file import read_document
from ocnna_fast.bench.tables import methods_table, summarise_criteria

ANCHORS = """## Published figures, for orientation (not comparable)

These come from the papers, with their own training budgets (hundreds of
epochs of fine-tuning on lossless CIFAR-10 from stronger baselines); ours fine-
tune for a few epochs on a JPEG copy of CIFAR-10. Read them as where the
methods land with a full budget, not as rows of our tables.

| method, ResNet-56 on CIFAR-10 | baseline -> pruned top-1 | parameters removed / speed-up | source |
| --- | --- | --- | --- |
| HRank | 93.26 -> 93.17 | 42.4% of parameters | Lin et al., CVPR 2020 |
| CHIP | -> 94.16 | 42.8% of parameters | Sui et al., NeurIPS 2021 |
| Torch-Pruning Group-L1 | 93.53 -> 92.93 | 2.11x MACs | Fang et al., DepGraph, CVPR 2023 |
| DepGraph | -> 93.77 | 2.13x MACs | Fang et al., DepGraph, CVPR 2023 |
"""


def _base(command: str) -> str:
    """Which weights a suite started from, as its command names them (the manifest test checks that they are
    the weights it ran on)."""
    words = shlex.split(command)
    if "--weights" not in words:
        return "from its default weights"
    path = Path(words[words.index("--weights") + 1])
    return f"from `{path.parent.name}/{path.name}`"


def _base_folder(command: str) -> str:
    """The folder of data/ a suite's weights came from (its default weights: the zoo's)."""
    words = shlex.split(command)
    return Path(words[words.index("--weights") + 1]).parent.name if "--weights" in words else "the zoo's"


def table(folder: Path) -> str:
    doc = read_document(folder / "results.json")
    cfg, base = doc["config"], doc["base"]
    rows = summarise_criteria(doc["rows"])
    ft = any(r["acc_finetuned"] is not None for r in rows)
    head = (
        "| k | criterion | seeds | RPR | MACs ratio | after surgery | after BN re-estimation |"
        + (" after fine-tuning |" if ft else "")
        + " scoring s | latency b1 (ms) | latency b64 (ms) |"
    )
    sep = "| --- " * (head.count("|") - 1) + "|"
    lines = [head, sep]
    best = {}
    for r in rows:
        key = (r["k"], "acc_finetuned" if ft else "acc_bn")
        v = r[key[1]]
        if v is not None and v > best.get(r["k"], -1):
            best[r["k"]] = v
    for r in rows:
        field = "acc_finetuned" if ft else "acc_bn"

        def cell(f, digits=2):
            v = r[f]
            if v is None:
                return "-"
            s = f"{v:.{digits}f}"
            if f == field and abs(v - best[r["k"]]) < 1e-9:
                s = f"**{s}**"
            if f in ("acc_bn", "acc_finetuned") and r["seeds"] > 1 and r[f + "_min"] is not None:
                s += f" ({r[f + '_min']:.2f}-{r[f + '_max']:.2f})"
            return s

        lines.append(
            f"| {r['k']:g} | {r['criterion']} | {r['seeds']} | {cell('rpr', 4)} | {cell('macs_ratio', 4)} | "
            f"{cell('acc_surgery')} | {cell('acc_bn')} |"
            + (f" {cell('acc_finetuned')} |" if ft else "")
            + f" {cell('score_seconds', 1)} | {cell('latency_ms_b1')} | {cell('latency_ms_b64', 1)} |"
        )
    command = (folder / "command.txt").read_text().strip() if (folder / "command.txt").exists() else "(not recorded)"
    return (
        f"### {cfg['arch']} {_base(command)}: base {base['accuracy']:.2f}% on {cfg['eval_images']} JPEG test images, "
        f"{'fine-tuned ' + str(cfg['finetune_epochs']) + ' epoch(s) on ' + str(cfg['train_images']) + ' images' if ft else 'BN re-estimation only'}\n\n"
        f"```bash\n{command}\n```\n\n"
        f"Base latency {base['latency_ms_b1']:.2f} ms (batch 1) / {base['latency_ms_b64']:.1f} ms "
        f"(batch 64), {base['threads']} threads, median of repeats; the machine is shared, so latencies move by "
        f"tens of percent between runs. Bold: the best accuracy at that k. Random: mean over seeds (range).\n\n"
        + "\n".join(lines)
        + "\n"
    )


PEERS = ("l1", "l2", "fpgm", "taylor", "bn-scale", "lamp", "hrank")
OURS = ("ocnna", "ocnna-rms", "mean-energy")


def summary(folders, commands) -> str:
    """One row per (suite, k): OCNNA, our variants, the best peer and random,
    so the claim 'beats every peer' can be read off without scanning tables;
    ``commands`` maps a suite's folder name to its command (which names its base)."""
    lines = [
        "| model | base | k | measured | ocnna | ocnna-rms | mean-energy | best peer | random (mean) "
        "| ocnna-rms - best peer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in folders:
        if not (f / "results.json").exists():
            continue
        doc = read_document(f / "results.json")
        rows = summarise_criteria(doc["rows"])
        ft = any(r["acc_finetuned"] is not None for r in rows)
        field = "acc_finetuned" if ft else "acc_bn"
        for k in sorted({r["k"] for r in rows}):
            at = {r["criterion"]: r[field] for r in rows if r["k"] == k and r[field] is not None}
            peers = {c: v for c, v in at.items() if c in PEERS}
            if not peers or "ocnna-rms" not in at:
                continue
            best = max(peers, key=peers.get)
            cell = lambda c: f"{at[c]:.2f}" if c in at else "-"  # noqa: E731
            lines.append(
                f"| {doc['config']['arch']} | {_base_folder(commands[f.name])} | {k:g} "
                f"| {'fine-tuned' if ft else 'after BN'} | {cell('ocnna')} | "
                f"{cell('ocnna-rms')} | {cell('mean-energy')} | {best} {peers[best]:.2f} | {cell('random')} | "
                f"{at['ocnna-rms'] - peers[best]:+.2f} |"
            )
    return (
        "## Summary: OCNNA and its variants against the best peer\n\n"
        "Generated from the tables below (accuracy in %, 10,000 JPEG test images; MobileNet: the 500 odd "
        'images of the ImageNet sample, and its "after BN" is folded BatchNorm re-estimation; peers: '
        + ", ".join(PEERS)
        + "; fine-tuned rows average the seeds each criterion ran).\n\n"
        + "\n".join(lines)
        + "\n"
    )


def ablations(path: Path) -> str:
    docs = json.loads(path.read_text())
    keys = [
        ("A", "spearman_cv_vs_mean_energy", "Spearman: OCNNA (CV) vs mean energy, per group"),
        ("A", "spearman_cv_vs_l1", "Spearman: OCNNA vs L1"),
        ("A", "spearman_mean_energy_vs_l1", "Spearman: mean energy vs L1"),
        ("A", "kept_overlap_cv_l1", "share of kept filters OCNNA and L1 agree on (k=40)"),
        ("A", "kept_overlap_mean_energy_l1", "share of kept filters mean energy and L1 agree on"),
        ("A", "kept_overlap_random_expected", "the same for two random selections (expected)"),
        ("B", "spearman_250_vs_4000", "Spearman: OCNNA from 250 vs 4000 images"),
        ("B", "spearman_1000_vs_4000", "Spearman: OCNNA from 1000 vs 4000 images"),
        ("B", "acc_bn_ocnna_1000_images", "accuracy after BN, OCNNA scored on 1000 images"),
        ("B", "acc_bn_ocnna_4000_images", "accuracy after BN, OCNNA scored on 4000 images"),
        ("C", "global_threshold_removed_share_max", "one global k=40 threshold: largest share a group loses"),
        ("C", "groups_losing_over_80_percent", "groups losing over 80% under it"),
        ("C", "groups_losing_under_10_percent", "groups losing under 10% under it"),
    ]
    head = "| ablation | " + " | ".join(d["arch"] for d in docs) + " |"
    lines = [head, "| --- |" + " --- |" * len(docs)]
    for part, key, label in keys:
        vals = [d[part][key] for d in docs]
        lines.append(
            f"| {label} | "
            + " | ".join(f"{v:.3f}" if isinstance(v, float) and abs(v) < 2 else f"{v:g}" for v in vals)
            + " |"
        )
    return (
        "## Ablations: why OCNNA's score trails\n\n```bash\npython benchmarks/ocnna_ablations.py --arch "
        + " ".join(d["arch"] for d in docs)
        + f" --json {path}\n```\n\nk=40, scope {docs[0].get('scope', 'inner')}, "
        "BN re-estimation on 1000 images, 10,000 test images.\n\n" + "\n".join(lines) + "\n"
    )


def _is_budget_suite(folder: Path) -> bool:
    rows = json.loads((folder / "results.json").read_text()).get("rows") or []
    return bool(rows) and "method" in rows[0]


def budget_suites(folders) -> str:
    """The equal-cost suites (``ocnna-fast bench --target``): their own tables, commands and plots."""
    from ocnna_fast.bench.equal_cost import upgrade_row

    parts = [
        "## Pruning methods at equal cost\n\n"
        "`ocnna-fast bench --target`: every method prunes to the same MACs budget (within 2%, the `reached` "
        "column); `uniform:C` is the paper's rule with k bisected to the budget, `tp-global` Torch-Pruning's "
        "own global pruning through its API; rows sorted by accuracy, best first.\n"
    ]
    for f in folders:
        doc = read_document(f / "results.json", upgrade_row)
        command = (f / "command.txt").read_text().strip() if (f / "command.txt").exists() else "(not recorded)"
        text = methods_table(doc["rows"], doc["config"], doc["base"]).split("\n", 2)[2]
        parts.append(f"### {doc['config']['arch']} {_base(command)} (`{f.name}`)\n\n```bash\n{command}\n```\n\n{text}")
        if (f / "accuracy_vs_cost.png").exists():
            parts.append(f"![accuracy against MACs, {doc['config']['arch']}]({f.as_posix()}/accuracy_vs_cost.png)\n")
    return "\n".join(parts)


def search_costs(entry, folder: Path) -> str:
    """The width search's cost and accuracy, search by search, over data seeds (``search_cost.py``)."""
    import search_cost

    rows = _search_rows(entry, folder)
    if not rows:
        return ""
    return "\n".join(
        [
            f"## What the width search costs: {entry['about']}\n",
            f"`{entry['command']}`\n",
            "Forward passes: forward-pass equivalents over the images one pass stands for (the calibration "
            "images; one-pass: the evaluation images), image-forwards: the images run times the share of the "
            'network they ran through (docs/budget-experiments.md, "What the search costs"); after BN: top-1 after BatchNorm '
            "re-estimation on the run's evaluation images (2,000 CIFAR test images; 500 of the ImageNet sample).\n",
            search_cost.table(rows),
            "",
        ]
    )


def imagenet_scale(entries) -> str:
    """One prune per ImageNet model at MACs 0.6 with the defaults: whether it completes and what the search costs."""
    import search_cost

    lines = [
        "## The width search at ImageNet scale: MobileNet v1 0.75, MobileNet v2 and EfficientNet-Lite0 at MACs 0.6\n",
        "The default search and criterion on the ImageNet sample (500 images for scoring and calibration, the "
        "other 500 for accuracy), one data seed, stopped after the folded correction; each row's command:\n",
    ]
    lines += [f"- `{e['command']}`" for e in entries]
    lines += [
        "",
        "| model | groups searched | forward passes | image-forwards | seconds | measured | MACs reached | base | after BN |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [r for e in entries for r in search_cost.rows_in(Path("benchmarks/results") / e["name"])]
    if not rows:
        return ""
    for r in rows:
        lines.append(
            f"| {r['model']} | {len(r['widths'])} | {r['passes']:.1f} | {r['forwards']:,.0f} | {r['seconds']:.0f} "
            f"| {r['measured']} | {r['reached']:.3f} | {r['base']:.2f} | {r['after_bn']:.2f} |"
        )
    lines += ["", "(Seconds depend on the machine and on what else it runs.)", ""]
    return "\n".join(lines)


def _search_rows(entry, folder: Path) -> list:
    """An entry's search-cost runs, with the full searches of its ``--baseline`` folder (measured before a change)."""
    import search_cost

    rows = search_cost.rows_in(folder)
    words = shlex.split(entry["command"])
    if rows and "--baseline" in words:
        rows += search_cost.baseline_rows(words[words.index("--baseline") + 1], rows)
    return rows


def search_depth(entries, models) -> str:
    """The search's cost model by model, shallow to deep (``search_cost.depth_table``); ``models``: per
    model, the entry of its runs, the search standing for the default there and a word on it."""
    import search_cost

    by_name = {e["name"]: e for e in entries}
    results = Path("benchmarks/results")
    runs = [(_search_rows(by_name[n], results / n), search, about) for n, search, about in models if n in by_name]
    if not any(rows for rows, _, _ in runs):
        return ""
    return "\n".join(
        [
            "## How the width search's cost grows with depth\n",
            "From the search-cost runs above: the full search (two passes a candidate, 100 moves: the search "
            "before the one-pass search) against the default, in forward passes of each network over its own "
            "images. The ResNet-50-shaped network is torchvision's ResNet-50 with random weights on the CIFAR "
            "images (`search-cost-depth`): its cost, not its accuracy, is the point, and every loss its random "
            "weights give is 0, so today's default, which stops each loss curve at its first share that loses "
            "nothing, would stop every curve at its first point; its row shows the default before that stop "
            "(the curves on half the images), which measures every point.\n",
            search_cost.depth_table(runs),
            "",
        ]
    )


def equal_recovery(entry, path: Path) -> str:
    """What pruning costs at equal recovery and what the user ends with (``equal_recovery.py``)."""
    if not path.is_file():
        return ""
    r = json.loads(path.read_text())
    return "\n".join(
        [
            f"## What pruning costs at equal recovery: {entry['about']}\n",
            f"`{entry['command']}`\n",
            f"The job: `{r['command']}`. Top-1 on all {r['test_images']:,} test images:\n",
            "| model | top-1 |",
            "| --- | --- |",
            f"| base ({r['base_weights'].split('/')[-1]}) | {r['base']:.2f} |",
            f"| base after the job's distillation, from itself | {r['base_after_the_same_distillation']:.2f} |",
            f"| pruned after the job's distillation | {r['pruned_after_distillation']:.2f} |",
            "",
            f"What you end with: {r['base'] - r['pruned_after_distillation']:.2f} points under the base. What "
            f"pruning costs at equal recovery: {r['cost_of_pruning_at_equal_recovery']:.2f} points (the same "
            "distillation given to the unpruned base moves it too).",
            "",
        ]
    )


def precision(entry, path: Path) -> str:
    """fp32 against ``--precision amp``: accuracy and speed of one distillation (``gpu_job.py``)."""
    if not path.is_file():
        return ""
    lines = [f"## Mixed precision: {entry['about']}\n", f"`{entry['command']}`\n"]
    lines += ["| check | fp32 top-1 | amp top-1 | images/s fp32 | images/s amp |", "| --- | --- | --- | --- | --- |"]
    for r in json.loads(path.read_text()):
        acc, speed = r["accuracy"], r["images_per_second"]
        lines.append(
            f"| {r['check']} | {acc['fp32']:.2f} | {acc['amp']:.2f} | {speed['fp32']:.0f} | {speed['amp']:.0f} |"
        )
    lines += ["", "(Images per second depend on the machine, its bfloat16 support and what else it ran.)", ""]
    return "\n".join(lines)


def main() -> None:
    """BENCHMARKS.md from the manifest's suites and result files, in its order."""
    os.chdir(Path(__file__).resolve().parents[1])  # the page links results by their path in the repository
    results = Path("benchmarks/results")
    entries = json.loads((results.parent / "suites.json").read_text())["entries"]
    args = [results / e["name"] for e in entries]
    suites = [f for f in args if (f / "results.json").exists()]
    folders = [f for f in suites if not _is_budget_suite(f)]
    parts = [
        (results.parent / "benchmarks_intro.md").read_text(),
        summary(folders, {e["name"]: e["command"] for e in entries}),
    ]
    budgets = [f for f in suites if _is_budget_suite(f)]
    if budgets:
        parts.append(budget_suites(budgets))
    parts += [ablations(f) for f in args if f.name == "ablations.json"]
    costs = [e for e in entries if e["name"].startswith("search-cost")]
    parts += [search_costs(e, results / e["name"]) for e in costs if not e["name"].endswith("-macs06")]
    parts.append(imagenet_scale([e for e in costs if e["name"].endswith("-macs06")]))
    today = "today's: one pass, 40 moves, the curves on all the images, from the top"
    depth = [
        ("search-cost-resnet20-draws", "one-pass, 40 moves", today),
        ("search-cost-resnet56-top-down", "one-pass, 40 moves", today),
        ("search-cost-depth", "one-pass, 40 moves, curves on 250 images", "the curves on half the images, no stop"),
    ]
    parts.append(search_depth(entries, depth))
    parts += [equal_recovery(e, results / e["name"]) for e in entries if e["name"].startswith("equal-recovery")]
    parts += [precision(e, results / e["name"]) for e in entries if e["name"].startswith("amp-")]
    parts.append("## The suites\n")
    for f in folders:
        parts.append(table(f))
    parts.append(ANCHORS)
    Path("BENCHMARKS.md").write_text("\n".join(p for p in parts if p))  # a result not yet run leaves no gap
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
