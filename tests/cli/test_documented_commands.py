"""Every command README and docs/ show runs as written, as far as the
parser can tell: each `ocnna-fast` line of a code block, and each inline one
complete enough to run (it names its --out), parses with the CLI's parser."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from ocnna_fast.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]


def _commands():
    found = []
    for page in PAGES:
        text = re.sub(r"\\\n\s*", " ", page.read_text())  # shell line continuations
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
            for line in block.split("\n"):
                for part in line.split("&&"):
                    if part.strip().startswith("ocnna-fast "):
                        found.append((page.name, part.strip()))
        for span in re.findall(r"`(ocnna-fast [^`]+)`", text):
            if "--out" in span:
                found.append((page.name, " ".join(span.split())))
    return found


COMMANDS = _commands()


def test_the_pages_show_commands():
    assert len(COMMANDS) > 30 and {p for p, _ in COMMANDS} >= {"README.md", "BENCHMARKS.md"}


@pytest.mark.parametrize("page, command", COMMANDS, ids=[f"{p}:{c[11:60]}" for p, c in COMMANDS])
def test_a_documented_command_parses(page, command):
    argv = shlex.split(command.split(" #")[0])[1:]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{page}: `{command}` does not parse: {err.getvalue().strip().splitlines()[-1]}")
