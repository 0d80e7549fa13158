"""The tree is the map: one sub-package per stage, imports flowing one way
(a package never imports one of a higher layer, nor one beside it), small
modules and functions, and a package root that holds only the public face."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ocnna_fast"
MODULES = sorted(PACKAGE.rglob("*.py"))

# Lowest first.  A module may import its own package and any package of a
# lower layer; packages of one layer do not know each other.  "" is the
# package root (the native loader, the version, the errors).
LAYERS = [
    {""},
    {"_util"},
    {"data", "scoring"},
    {"models", "recovery"},
    {"selection"},
    {"surgery"},
    {"deploy"},
    {"budget"},
    {"job"},
    {"bench", "integrations"},
    {"cli"},
]
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}
ROOT_MODULES = {"__init__", "_native", "_version", "errors"}


def _package(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else ""


def _imported_packages(path: Path):
    """The top-level sub-package (or "" for the root) of every import of ours in ``path``."""
    own = list(path.relative_to(PACKAGE).parent.parts)
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            target = own[: len(own) - (node.level - 1)] + (node.module.split(".") if node.module else [])
        elif (node.module or "").split(".")[0] == "ocnna_fast":
            target = node.module.split(".")[1:]
        else:
            continue
        if target:
            yield target[0] if (PACKAGE / target[0]).is_dir() else "", node.lineno
        else:  # "from .. import x": x is a module of the root or a sub-package
            for alias in node.names:
                yield alias.name if (PACKAGE / alias.name).is_dir() else "", node.lineno


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(RANK) - {""}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_down_the_layers(path):
    if path == PACKAGE / "__init__.py":
        return  # the public face re-exports from every stage
    mine = _package(path)
    for other, line in _imported_packages(path):
        if other == mine:
            continue
        assert RANK[other] < RANK[mine], f"{path.relative_to(PACKAGE)}:{line} ({mine or 'root'}) imports {other}"


def test_the_root_holds_only_the_public_face():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    thin = {m for m in modules - ROOT_MODULES if len((PACKAGE / f"{m}.py").read_text().splitlines()) < 15}
    assert modules - thin <= ROOT_MODULES, sorted(modules - thin - ROOT_MODULES)
    assert len(modules - thin) <= 8


@pytest.mark.parametrize("package", sorted(set(RANK) - {"", "cli"}))
def test_no_package_holds_over_twelve_modules(package):
    assert len(list((PACKAGE / package).glob("*.py"))) - 1 <= 12  # __init__ aside


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path):
    source = path.read_text()
    assert len(source.splitlines()) <= 400, f"{path.name} has {len(source.splitlines())} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{path.name}:{node.lineno} {node.name} has {length} lines"


def test_the_layering_check_sees_a_wrong_way_import(tmp_path):
    """The check itself: an upward import planted in a lower package is found."""
    fake = tmp_path / "ocnna_fast"
    (fake / "scoring").mkdir(parents=True)
    (fake / "job").mkdir()
    planted = fake / "scoring" / "x.py"
    planted.write_text("from ..job.pipeline import PruneJob\nfrom .. import errors\n")
    globals()["PACKAGE"] = fake
    try:
        with pytest.raises(AssertionError, match="imports job"):
            test_imports_flow_down_the_layers(planted)
    finally:
        globals()["PACKAGE"] = Path(__file__).resolve().parents[1] / "ocnna_fast"
