"""The package stays readable: no module over 400 lines, no function over
80, and lower modules never import the command line or the pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ocnna_fast"
MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path):
    source = path.read_text()
    assert len(source.splitlines()) <= 400, f"{path.name} has {len(source.splitlines())} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 80, f"{path.name}:{node.lineno} {node.name} has {length} lines"


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            yield node.module or ""


# the orchestration layers: nothing below them may import them
UPPER = {"cli", "pipeline", "bench", "budget_bench"}


@pytest.mark.parametrize("path", [p for p in MODULES if "cli" not in p.parts], ids=lambda p: p.name)
def test_lower_modules_do_not_import_upper_ones(path):
    own = path.stem
    allowed = {"bench": {"pipeline"}, "budget_bench": {"pipeline"}, "pipeline": set(), "__init__": set()}.get(
        own, set()
    )
    for module in _imports(path):
        top = module.split(".")[0]
        assert top not in UPPER - allowed - {own}, f"{path.name} imports {module}"
