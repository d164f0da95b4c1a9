"""The architecture's rules, checked: the pure layers load no framework, no import cycle, and the
size limits (modules under 500 lines, functions under 60, the worker loop under 80)."""

from __future__ import annotations

import ast
import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "yt8m_search"
PURE = [
    "yt8m_search.models",
    "yt8m_search.metrics",
    "yt8m_search.bundle",
    "yt8m_search.results",
    "yt8m_search.artifacts",
    "yt8m_search.ensemble",
    "yt8m_search.data.tfrecord",
    "yt8m_search.data.parquet",
    "yt8m_search.data.synthetic",
    "yt8m_search.data.batch",
    "yt8m_search.data.inference",
    "yt8m_search.data.cache",
]
FRAMEWORKS = ("ray", "optuna", "wandb")
WORKER_LOOP = "train_loop_per_worker"


@pytest.mark.parametrize("module", PURE)
def test_pure_layers_load_no_framework(module: str) -> None:
    # a fresh interpreter: this test process has ray loaded already
    code = (f"import importlib, json, sys; importlib.import_module({module!r}); "
            f"print(json.dumps([m for m in {FRAMEWORKS!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], f"{module} loads {out.stdout.strip()}"


def _modules() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _import_graph(names: dict[str, Path]) -> dict[str, set[str]]:
    """Edges between the package's modules, from every import statement (in functions too)."""
    graph: dict[str, set[str]] = collections.defaultdict(set)
    for name, path in names.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("yt8m_search"):
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            # a module importing its own package (for a sibling) is not a cycle of design
            graph[name].update(t for t in targets if t in names and t != name and not name.startswith(t + "."))
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle() -> None:
    assert _cycles(_import_graph(_modules())) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_modules_and_functions_stay_small() -> None:
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        where = path.relative_to(PACKAGE.parent)
        if text.count("\n") > 500:
            too_long.append(f"{where}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                limit = 80 if node.name == WORKER_LOOP else 60
                if node.end_lineno - node.lineno + 1 > limit:  # type: ignore[operator]
                    too_long.append(f"{where}:{node.name}: {node.end_lineno - node.lineno + 1} lines")  # type: ignore[operator]
    assert too_long == []


def test_ruff_is_clean() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    root = PACKAGE.parent
    out = subprocess.run([str(ruff), "check", "--no-cache", "yt8m_search", "tests", "benchmarks", "scripts"],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
