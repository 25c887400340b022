"""Imports point one way (issue #14): no cycle between modules or packages, and the layers stay in order.

Why a test: a cycle is how "one concept, one place" decays. Two modules that import each other are one
concept split across files, and a cycle between packages means a stage reaches back up the pipeline.
Both creep in one lazy import at a time, so the graph here counts every import statement: module level,
inside functions, and under `TYPE_CHECKING`.

Nodes: modules, and for the package graph the second-level packages (`dspark_data.capture`,
`dspark_train.data`, ...) with each top-level module (`dspark_data.paths`) its own node. Importing
`a.b.c` also runs the package `a.b`'s `__init__`, but that implicit edge is not counted: only what the
statement names. The layers, lowest first: `schemas` < `dspark_data` < `dspark_train` < `cli`; a lower
layer never imports a higher one (`bench/` and `tests/` sit above all and are not checked).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("schemas", "dspark_data", "dspark_train", "cli")  # lowest first


def module_files(root: Path, packages: tuple[str, ...] = LAYERS) -> dict[str, Path]:
    """Dotted module name -> file, for every `.py` under the given top-level packages."""
    out: dict[str, Path] = {}
    for top in packages:
        for path in sorted((root / top).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _named(module: str, path: Path, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> set[str]:
    """The project modules one import statement names (the longest known prefix of each)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".")
            if path.name != "__init__.py":
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        subs = [f"{prefix}.{alias.name}" for alias in node.names]
        names = [s for s in subs if s in known]
        if len(names) < len(subs):  # some names are attributes of `prefix` itself
            names.append(prefix)
    out = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)
    return out


def module_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body."""
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module] |= _named(module, path, node, files)
    return graph


def package_of(module: str, files: dict[str, Path]) -> str:
    """The package-graph node: `top.sub` for modules inside a subpackage, else the module itself."""
    parts = module.split(".")
    if len(parts) >= 3 or (len(parts) == 2 and files[module].name == "__init__.py"):
        return ".".join(parts[:2])
    return module


def package_graph(graph: dict[str, set[str]], files: dict[str, Path]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {package_of(m, files): set() for m in graph}
    for module, targets in graph.items():
        here = package_of(module, files)
        out[here] |= {package_of(t, files) for t in targets} - {here}
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    rank = {top: i for i, top in enumerate(LAYERS)}
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if rank[target.split(".")[0]] > rank[module.split(".")[0]]:
                bad.append(f"{module} imports {target}")
    return bad


@pytest.fixture(scope="module")
def tree() -> tuple[dict[str, Path], dict[str, set[str]]]:
    files = module_files(ROOT)
    return files, module_graph(files)


def test_no_module_cycles(tree: tuple[dict[str, Path], dict[str, set[str]]]) -> None:
    _, graph = tree
    assert cycles(graph) == [], "modules that import each other: merge them or move the shared part below both"


def test_no_package_cycles(tree: tuple[dict[str, Path], dict[str, set[str]]]) -> None:
    files, graph = tree
    assert cycles(package_graph(graph, files)) == []


def test_layers_point_down(tree: tuple[dict[str, Path], dict[str, set[str]]]) -> None:
    _, graph = tree
    assert layer_violations(graph) == []


def test_the_checks_fail_on_a_new_cycle(tmp_path: Path) -> None:
    """The checker itself: a lazy import back up (the usual way a cycle sneaks in) is found at both levels,
    and so is a lower layer importing a higher one."""
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "__init__.py").write_text("")
    (tmp_path / "schemas" / "fmt.py").write_text("def f():\n    from dspark_data.store import writer\n")
    store = tmp_path / "dspark_data" / "store"
    capture = tmp_path / "dspark_data" / "capture"
    for pkg in (store, capture):
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
    (tmp_path / "dspark_data" / "__init__.py").write_text("")
    (store / "writer.py").write_text("from . import codecs\n")
    (store / "codecs.py").write_text("def g():\n    from .writer import x\n")
    (capture / "dump.py").write_text("from dspark_data.store.writer import ShardWriter\n")
    files = module_files(tmp_path, ("schemas", "dspark_data"))
    graph = module_graph(files)
    assert cycles(graph) == [["dspark_data.store.codecs", "dspark_data.store.writer"]]
    assert cycles(package_graph(graph, files)) == []
    (store / "writer.py").write_text("from dspark_data.capture import dump\n")
    graph = module_graph(module_files(tmp_path, ("schemas", "dspark_data")))
    assert cycles(package_graph(graph, files)) == [["dspark_data.capture", "dspark_data.store"]]
    assert layer_violations(graph) == ["schemas.fmt imports dspark_data.store.writer"]
