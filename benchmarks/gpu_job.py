"""The job on a GPU, end to end, against the CPU's record of the same runs
(part of ``benchmarks/gpu_check.sh``):

1. MobileNet v1 0.75 ``prune --target macs=0.8 --device cuda`` on the
   ImageNet sample, stopped after BatchNorm re-estimation: its widths against
   the CPU run's (``benchmarks/results/search-cost-mnv1/``, same command but
   the device) and its accuracy within 0.5 points.
2. ResNet-56 at MACs 0.5 (global allocation: no search) and one epoch of
   distillation on 10,000 training images, in fp32 and under AMP: images per
   second of each, and the accuracies within 0.5 points.

Prints one JSON line per check and a summary; exits 1 when a check fails.
The distillation check runs on any device: on a CPU, ``--precision amp`` is
autocast to bfloat16, and the check shows that path's accuracy against fp32.

    python benchmarks/gpu_job.py --out /tmp/gpu-job
    python benchmarks/gpu_job.py --device cpu --checks distillation --out /tmp/cpu-amp \
        --json benchmarks/results/amp-cpu-resnet56.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECORD_RUN = "mobilenet_v1_075_imagenet-macs0.8-one-pass-r40-c1-s0"  # the default search, seed 0
CPU_RECORD = HERE / "results" / "search-cost-mnv1" / RECORD_RUN / "report.json"
# what writes the CPU record (the manifest's search-cost-mnv1 entry, seed 0)
CPU_COMMAND = (
    "python benchmarks/search_cost.py mobilenet_v1_075_imagenet --dataset imagenet-sample --target macs=0.8 "
    '--criterion l1 --searches "one-pass --refine-steps 40 --curve-share 1" --seeds 0 '
    "--out benchmarks/results/search-cost-mnv1 -- --score-images 500 --bn-images 500 --batch-size 50"
)


def prune(out: Path, *flags: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "ocnna_fast.cli",
        "prune",
        "--no-progress",
        "--latency-repeats",
        "0",
        "--out",
        str(out),
    ]
    t = time.perf_counter()
    subprocess.run([*cmd, *flags], check=True)
    report = json.loads((out / "report.json").read_text())
    report["wall_seconds"] = time.perf_counter() - t
    return report


def mobilenet(out: Path, device: str) -> dict:
    if not CPU_RECORD.is_file():
        return {"check": "mobilenet_v1 on cuda vs cpu", "passed": False, "error": f"no CPU record: run {CPU_COMMAND}"}
    cpu = json.loads(CPU_RECORD.read_text())
    flags = cpu["settings"]["command"].split()[2:]  # the CPU run's own options, on the GPU
    flags = [f for f in flags if f not in ("--no-progress",)]
    flags = _drop(flags, "--out", "--device", "--latency-repeats") + ["--device", device]
    gpu = prune(out / "mnv1", *flags)
    same = {k: v[1] for k, v in gpu["widths"].items()} == {k: v[1] for k, v in cpu["widths"].items()}
    gap = gpu["pruned_accuracy_before_finetune"] - cpu["pruned_accuracy_before_finetune"]
    return {
        "check": f"mobilenet_v1 macs=0.8 on {device} vs the CPU record",
        "widths_equal": same,
        "after_bn_gpu": gpu["pruned_accuracy_before_finetune"],
        "after_bn_cpu": cpu["pruned_accuracy_before_finetune"],
        "search_seconds_gpu": gpu["allocation_seconds"],
        "search_seconds_cpu": cpu["allocation_seconds"],
        "passed": same and abs(gap) <= 0.5,
    }


def distillation(out: Path, device: str) -> dict:
    common = ["--arch", "resnet56", "--target", "macs=0.5", "--allocation", "global", "--criterion", "l1"]
    common += ["--train-images", "10000", "--finetune-epochs", "1", "--device", device, "--seed", "0"]
    runs = {p: prune(out / f"r56-{p}", *common, "--precision", p) for p in ("fp32", "amp")}
    speed = {p: 10000 / r["finetune_seconds"] for p, r in runs.items()}
    acc = {p: r["pruned_accuracy"] for p, r in runs.items()}
    return {
        "check": f"resnet56 one distillation epoch on {device}, fp32 vs amp",
        "images_per_second": speed,
        "accuracy": acc,
        "amp_speedup": speed["amp"] / speed["fp32"],
        "passed": abs(acc["amp"] - acc["fp32"]) <= 0.5,
    }


def _drop(flags, *names):
    out, skip = [], False
    for f in flags:
        if skip:
            skip = False
            continue
        if f in names:
            skip = True
            continue
        out.append(f)
    return out


CHECKS = {"mobilenet": mobilenet, "distillation": distillation}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/gpu-job")
    p.add_argument("--device", default="cuda")
    p.add_argument("--checks", nargs="+", choices=sorted(CHECKS), default=list(CHECKS))
    p.add_argument("--json", help="also write the checks' results here (a JSON list)")
    a = p.parse_args()
    out = Path(a.out)
    results = []
    for check in (CHECKS[name] for name in a.checks):
        try:
            results.append(check(out, a.device))
        except (subprocess.CalledProcessError, FileNotFoundError, KeyError) as exc:
            results.append({"check": check.__name__, "passed": False, "error": repr(exc)})
        print(json.dumps(results[-1]), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1) + "\n")
    failed = [r["check"] for r in results if not r["passed"]]
    print("all job checks passed" if not failed else f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
