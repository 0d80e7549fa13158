"""Writes BENCHMARKS.md from the suite's results folders (nothing is typed by hand).

    python benchmarks/benchmarks_md.py benchmarks/results/*

Each folder is one `ocnna-fast bench` run; its results.json holds the settings
and the cells.  The command that produced each folder is read from its
`command.txt` (written by the runner script `benchmarks/run_benchmarks.sh`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ocnna_fast.bench import summarise  # noqa: E402

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


def table(folder: Path) -> str:
    doc = json.loads((folder / "results.json").read_text())
    cfg, base = doc["config"], doc["base"]
    rows = summarise(doc["rows"])
    ft = any(r["acc_finetuned"] is not None for r in rows)
    head = ("| k | criterion | seeds | RPR | MACs ratio | after surgery | after BN re-estimation |"
            + (" after fine-tuning |" if ft else "") + " scoring s | latency b1 (ms) | latency b64 (ms) |")
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
            if f == "acc_bn" and r["seeds"] > 1 and r["acc_bn_min"] is not None:
                s += f" ({r['acc_bn_min']:.2f}-{r['acc_bn_max']:.2f})"
            return s

        lines.append(f"| {r['k']:g} | {r['criterion']} | {r['seeds']} | {cell('rpr', 4)} | {cell('macs_ratio', 4)} | "
                     f"{cell('acc_surgery')} | {cell('acc_bn')} |" + (f" {cell('acc_finetuned')} |" if ft else "")
                     + f" {cell('score_seconds', 1)} | {cell('latency_ms_b1')} | {cell('latency_ms_b64', 1)} |")
    command = (folder / "command.txt").read_text().strip() if (folder / "command.txt").exists() else "(not recorded)"
    return (f"### {cfg['arch']}: base {base['accuracy']:.2f}% on {cfg['eval_images']} JPEG test images, "
            f"{'fine-tuned ' + str(cfg['finetune_epochs']) + ' epoch(s) on ' + str(cfg['train_images']) + ' images' if ft else 'BN re-estimation only'}\n\n"
            f"```bash\n{command}\n```\n\n"
            f"Base latency {base['latency_ms_b1']['median']:.2f} ms (batch 1) / {base['latency_ms_b64']['median']:.1f} ms "
            f"(batch 64), {base['threads']} threads, median of repeats; the machine is shared, so latencies move by "
            f"tens of percent between runs. Bold: the best accuracy at that k. Random: mean over seeds (range).\n\n"
            + "\n".join(lines) + "\n")


def main() -> None:
    folders = [Path(a) for a in sys.argv[1:]]
    parts = [Path(__file__).with_name("benchmarks_intro.md").read_text()]
    for f in folders:
        if (f / "results.json").exists():
            parts.append(table(f))
    parts.append(ANCHORS)
    Path("BENCHMARKS.md").write_text("\n".join(parts))
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
