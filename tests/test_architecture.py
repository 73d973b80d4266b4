"""The package's structure: no import cycle, no reach into another module's private names, and
every path under results/ made by elmlff.layout alone (the rules included)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "elmlff"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _resolve(node: ast.ImportFrom, here: str, is_pkg: bool) -> str | None:
    if node.level:
        base = here.split(".") if is_pkg else here.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        return ".".join(base + ([node.module] if node.module else []))
    return node.module


def imports_of(name: str) -> dict[str, set[str]]:
    """{imported elmlff module: names imported from it} of one module, lazy imports included
    (an import inside a function closes a cycle as surely as one at the top)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    out: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("elmlff"):
                    out.setdefault(a.name, set())
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(node, name, path.name == "__init__.py")
            if not mod or not mod.startswith("elmlff"):
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if sub in MODULES:  # `from elmlff import meta`: the module itself
                    out.setdefault(sub, set())
                else:
                    out.setdefault(mod, set()).add(a.name)
    out.pop(name, None)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_says_what_it_owns():
    missing = [m for m, p in MODULES.items() if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing


def test_the_cycle_finder_finds_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(g) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package():
    graph = {m: set(v) for m, v in GRAPH.items()}
    assert _cycles(graph) == []


def test_no_module_imports_another_modules_private_names():
    bad = [
        f"{m} imports {name} from {mod}"
        for m, deps in GRAPH.items()
        for mod, names in deps.items()
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not bad


def test_no_module_reaches_into_another_modules_private_attributes():
    """``alias._name`` where ``alias`` is an imported elmlff module."""
    bad = []
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases |= {a.asname or a.name for a in node.names if a.name.startswith("elmlff")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("elmlff"):
                aliases |= {
                    a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in MODULES
                }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                bad.append(f"{m}: {node.value.id}.{node.attr}")
    assert not bad


#: file names (exact, or beside a "/") and folder names (beside a "/") under results/
RESULT_FILES = [
    "reference.zarr",
    "predictions.zarr",
    "split.json",
    "metrics.csv",
    "baselines.json",
    "comparisons.csv",
    "subsets.csv",
    "md_summary.csv",
    "uncertainty.csv",
    "uncertainty_summary.json",
    "uncertainty_coverage.csv",
    "predictions.npz",
    "models.pt",
    "info.json",
    "to_label.extxyz",
    "base.json",
    "meta.pt",
    "meta.json",
]
RESULT_DIRS = ["bases", "metas", "subsets", "benchmarks", "figures", "md", "uq", "report"]


def _names_a_path(literal: str, name: str) -> bool:
    if name in RESULT_FILES and literal == name:
        return True
    return f"/{name}" in literal or f"{name}/" in literal


def _string_literals(tree: ast.AST) -> list[str]:
    """String constants that are not docstrings (f-string parts included)."""
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docs.add(id(body[0].value))
    return [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
    ]


def test_the_path_finder_sees_a_planted_path():
    assert _names_a_path("metrics.csv", "metrics.csv")
    assert _names_a_path("results/{d}/bases/{m}", "bases")
    assert not _names_a_path("Fig. 2a bars from metrics.csv files", "metrics.csv")
    assert not _names_a_path("bases", "bases")  # a config key, not a path


@pytest.mark.parametrize("name", RESULT_FILES + RESULT_DIRS)
def test_a_results_path_is_built_in_one_module(name):
    """Outside docstrings, a string that names a path of results/ appears only in
    elmlff.layout (messages and help texts may mention a file by name)."""
    where = [
        m
        for m, path in MODULES.items()
        if any(_names_a_path(s, name) for s in _string_literals(ast.parse(path.read_text())))
    ]
    assert set(where) <= {"elmlff.layout"}, where


def test_the_rules_build_every_results_path_from_the_layout():
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        code = [line.split("#", 1)[0] for line in smk.read_text().splitlines()]
        assert not [c for c in code if re.search(r"['\"](results|logs)/", c)], smk.name
    snakefile = [line.split("#", 1)[0] for line in (ROOT / "Snakefile").read_text().splitlines()]
    assert not [c for c in snakefile if "results/" in c]
