"""Latency targets and `--round-to`, measured: ResNet-56 pruned with
`ocnna-fast prune --target latency=R --allocation global` in ONNX Runtime
at batch 1 and 64, and at `--target macs=0.5` with the main job's
sensitivity allocation, each with and without `--round-to 8`; no
distillation (latency does not depend on it).

    python benchmarks/latency_targets.py [--out benchmarks/results/latency-targets] [--ratio 0.6]
    python benchmarks/latency_targets.py --self-check   # the measurement's own noise

Each run is one `ocnna-fast prune` into OUT/NAME (a finished run is kept,
so a stopped script resumes).  The table it prints gives, per run, the
ratio the fit measured (pruned over base, timed side by side) and the
ratio measured again afterwards twice: by the report's separate latency
pass (`--latency-repeats 50`, the base timed first, then the pruned model)
and by the fit's own interleaved protocol with five times its calls
(``interleaved``), then the MACs ratio and the accuracy after BatchNorm
re-estimation.  Needs the deploy extra; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

COMMON = [
    "--arch", "resnet56", "--criterion", "ocnna-rms", "--score-images", "500", "--eval-images", "2000",
    "--finetune-epochs", "0", "--latency-repeats", "50", "--no-progress",
]  # fmt: skip


def runs(ratio: float):
    """(name, extra arguments) of every run."""
    for batch in (1, 64):
        for round_to in (1, 8):
            yield f"latency{ratio:g}-b{batch}-r{round_to}", [
                "--target", f"latency={ratio:g}", "--latency-batch", str(batch), "--round-to", str(round_to),
                "--allocation", "global",
            ]  # fmt: skip
    for round_to in (1, 8):
        yield f"macs0.5-r{round_to}", ["--target", "macs=0.5", "--round-to", str(round_to)]


def interleaved(folder: Path, repeats: int = 100) -> dict:
    """The pruned model's ORT latency ratio at batch 1 and 64, measured again
    after the run by the fit's own protocol (``LatencyRatio``: the base and
    the pruned model alternating in blocks, fresh sessions, ``repeats``
    timed calls each, five times the fit's), kept in FOLDER/interleaved.json."""
    cached = folder / "interleaved.json"
    if cached.exists():
        return json.loads(cached.read_text())
    from ocnna_fast.budget.latency import LatencyRatio
    from ocnna_fast.data.local import pretrained_weights
    from ocnna_fast.models import build, load_weights
    from ocnna_fast.surgery.plans import load_pruned

    base = load_weights(build("resnet56"), pretrained_weights("resnet56", None)).eval()
    pruned = load_pruned(folder / "pruned").eval()
    measured = {
        "repeats": repeats,
        "ratios": {f"b{b}": LatencyRatio(base, 32, batch=b, repeats=repeats)(pruned) for b in (1, 64)},
    }
    cached.write_text(json.dumps(measured, indent=1))
    return measured


def row(name: str, report: dict, again_interleaved: dict) -> str:
    lat = report.get("latency", {})
    again = {k: 1.0 / v for k, v in lat.get("speedup", {}).items()}  # pruned over base
    m = report.get("target_measured")
    fit = f"{m['ratio']:.3f} (b{m['batch']}: {m['base_ms']:.2f} -> {m['pruned_ms']:.2f} ms)" if m else "-"
    cells = " | ".join(f"{again.get(k, float('nan')):.3f}" for k in ("onnxruntime_b1", "onnxruntime_b64"))
    cells += " | " + " | ".join(f"{again_interleaved['ratios'][k]:.3f}" for k in ("b1", "b64"))
    widths = report.get("widths", {}).values()
    odd = sum(1 for before, after in widths if after != before and after % 8)
    return (
        f"| {name} | {report['target']} | {fit} | {cells} | {report['macs_ratio']:.4f} | {odd} | "
        f"{report['pruned_accuracy_before_finetune']:.2f} |"
    )


def self_check(times: int = 5) -> None:
    """The base ResNet-56 measured against a copy of itself by the fit's
    own measurement (``LatencyRatio``), ``times`` times per batch size:
    every ratio should be 1, and how far they stray is the noise a
    latency target is met through."""
    import copy

    from ocnna_fast.budget.latency import LatencyRatio
    from ocnna_fast.models import build

    model = build("resnet56").eval()
    for batch in (1, 64):
        meter = LatencyRatio(model, 32, batch=batch)
        ratios = [meter(copy.deepcopy(model)) for _ in range(times)]
        print(f"ONNX Runtime, batch {batch}: ratios {' '.join(f'{r:.3f}' for r in ratios)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/latency-targets")
    ap.add_argument("--ratio", type=float, default=0.6)
    ap.add_argument("--self-check", action="store_true", help="only measure the base against itself")
    args = ap.parse_args()
    if args.self_check:
        self_check()
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "| run | target | ratio measured by the fit | ORT b1 ratio, measured again | ORT b64 ratio, measured again "
        "| ORT b1 ratio, measured again interleaved | ORT b64 ratio, measured again interleaved | MACs ratio | pruned widths not a multiple of 8 "
        "| accuracy after BN |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, extra in runs(args.ratio):
        folder = out / name
        if not (folder / "report.json").exists():
            cmd = ["ocnna-fast", "prune", *COMMON, *extra, "--out", str(folder)]
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, stdout=sys.stderr)
        lines.append(row(name, json.loads((folder / "report.json").read_text()), interleaved(folder)))
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
