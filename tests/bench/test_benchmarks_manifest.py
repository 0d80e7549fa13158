"""benchmarks/ as tools: one manifest names every result BENCHMARKS.md shows
with the command that writes it, and every file there says what it is for."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
ENTRIES = json.loads((BENCH / "suites.json").read_text())["entries"]


def test_every_suite_folder_is_in_the_manifest_with_its_recorded_command():
    recorded = {p.parent.name: p.read_text().strip() for p in (BENCH / "results").glob("*/command.txt")}
    listed = {e["name"]: e["command"] for e in ENTRIES if e["kind"] == "suite"}
    assert listed == recorded


def test_every_manifest_entry_has_its_results_and_writes_them_where_it_says():
    for e in ENTRIES:
        path = BENCH / "results" / e["name"]
        argv = shlex.split(e["command"])
        if e["kind"] == "suite":
            assert (path / "results.json").exists(), e["name"]
            assert (
                argv[:2] == ["ocnna-fast", "bench"]
                and argv[argv.index("--out") + 1] == f"benchmarks/results/{e['name']}"
            )
        else:
            assert path.exists(), e["name"]
            assert (
                argv[0] == "python" and (BENCH.parent / argv[1]).exists() and f"benchmarks/results/{e['name']}" in argv
            )


def test_every_file_in_benchmarks_says_what_it_is_for():
    table = (BENCH / "README.md").read_text()
    described = set(re.findall(r"`([\w.]+\.(?:py|sh|json|md))`", table))
    files = {p.name for p in BENCH.iterdir() if p.is_file() and p.name != "README.md"}
    assert files - described == set(), "add a row to benchmarks/README.md"
    assert described - files - {"README.md"} == set(), "benchmarks/README.md names files that are gone"


def test_every_committed_result_reads_as_todays_schema():
    """Schema 1 files are read with today's names: methods as prune's flags,
    the recovery as the flags name it."""
    from ocnna_fast.bench.equal_cost import upgrade_row
    from ocnna_fast.bench.results_file import RECOVERY_V1, SCHEMA, read_document
    from ocnna_fast.budget.spec import parse_method
    from ocnna_fast.recovery.recover import FOLDED, RECOVERIES

    for e in ENTRIES:
        if e["kind"] != "suite":
            continue
        doc = read_document(BENCH / "results" / e["name"] / "results.json", upgrade_row)
        assert doc["schema"] == SCHEMA
        assert doc["config"].get("folded_correction", "refit") in FOLDED
        for row in doc["rows"]:
            assert row.get("recalibration", "batchnorm") in RECOVERIES and row.get("recalibration") not in RECOVERY_V1
            if "method" in row:
                parse_method(row["method"])  # today's grammar, or a ValueError


def test_every_cifar_resnet_suite_reruns_from_the_base_it_ran_on():
    """A suite's results carry the digest of the weights it started from; its
    command must load the same weights today.  A command that leaves the base
    to the default would rerun from another network once that default changes
    (as it did when JPEG-adapted bases began to ship): pinned ``--weights``
    or today's default, the digest must match."""
    from ocnna_fast.bench.results_file import state_sha256
    from ocnna_fast.cli.loading import load_model
    from ocnna_fast.data.local import PRETRAINED

    def option(argv, flag, default=None):
        return argv[argv.index(flag) + 1] if flag in argv else default

    digests, checked = {}, 0
    for e in ENTRIES:
        argv = shlex.split(e["command"])
        if e["kind"] != "suite" or option(argv, "--arch") not in PRETRAINED:
            continue
        weights = option(argv, "--weights")
        key = (option(argv, "--arch"), weights, option(argv, "--dataset", "cifar10-jpeg"))
        if key not in digests:
            path = str(BENCH.parent / weights) if weights else None
            digests[key] = state_sha256(load_model(key[0], path, None, key[2])[0])
        config = json.loads((BENCH / "results" / e["name"] / "results.json").read_text())["config"]
        assert config["weights_sha256"] == digests[key], f"{e['name']}: its command loads other weights than it ran on"
        checked += 1
    assert checked >= 20
