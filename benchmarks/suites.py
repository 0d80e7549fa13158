"""Reruns what the manifest (benchmarks/suites.json) lists: every benchmark
suite BENCHMARKS.md shows and the result files README and docs/ quote, each
with the command that writes it.

    python benchmarks/suites.py list               # names and commands
    python benchmarks/suites.py run [NAME ...]     # all, or these; a suite resumes where it stopped
    python benchmarks/benchmarks_md.py             # then BENCHMARKS.md, in the manifest's order

The full set takes many hours on 2 cores (run it in the background with
nohup); every suite writes its rows as cells finish, so a stopped run loses
at most the cell in progress.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = Path(__file__).with_name("suites.json")


def entries() -> list:
    return json.loads(MANIFEST.read_text())["entries"]


def _argv(command: str) -> list:
    """A manifest command as an argument list run from the repository root
    (``python`` is this interpreter; suites run without progress bars)."""
    argv = shlex.split(command)
    if argv[0] == "python":
        argv[0] = sys.executable
    if argv[:2] == ["ocnna-fast", "bench"] and "--no-progress" not in argv:
        argv.append("--no-progress")
    return argv


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the manifest's names and commands")
    run = sub.add_parser("run", help="run the commands (all, or the names given)")
    run.add_argument("names", nargs="*")
    args = ap.parse_args()
    known = {e["name"]: e for e in entries()}
    if args.action == "list":
        for e in known.values():
            print(f"{e['name']}: {e['command']}")
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        raise SystemExit(f"not in {MANIFEST.name}: {', '.join(unknown)} (see: python benchmarks/suites.py list)")
    for name in args.names or list(known):
        start = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        subprocess.run(_argv(known[name]["command"]), cwd=REPO, check=True)
        print(f"[{time.strftime('%H:%M:%S')}] {name} done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
