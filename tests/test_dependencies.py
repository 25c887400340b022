"""Every third-party package the code imports is declared in pyproject.toml (issue #12).

Runtime code (cli/, dspark_data/, dspark_train/, schemas/, bench/) may only import what `dependencies`
or a runtime extra (gpu/cpu: vLLM) declares; tests may also use the `dev` extra. A test module that
imports an optional package only after `pytest.importorskip("pkg...")` is exempt for that package.
Import names map to distributions through importlib.metadata (e.g. `yaml` -> PyYAML).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_DIRS = ("cli", "dspark_data", "dspark_train", "schemas", "bench")
TEST_ONLY_EXTRAS = ("dev",)
# Packages a test fixture fetches itself into a private directory and imports only in a child process there,
# so they are deliberately in no extra (speculators would pull a GPU vLLM as a dependency).
FETCHED_BY_FIXTURES = {"tests/speculators_fixture.py": {"speculators"}}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return _norm(re.split(r"[\s<>=!~;\[(]", spec.strip(), maxsplit=1)[0])


def _declared() -> tuple[set[str], set[str]]:
    """(distributions runtime code may import, distributions tests may import)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_requirement_name(s) for s in project.get("dependencies", [])}
    extras = project.get("optional-dependencies", {})
    for extra, specs in extras.items():
        if extra not in TEST_ONLY_EXTRAS:
            runtime |= {_requirement_name(s) for s in specs}
    tests = runtime | {_requirement_name(s) for e in TEST_ONLY_EXTRAS for s in extras.get(e, [])}
    return runtime, tests


def _top_level_imports(path: Path) -> dict[str, int]:
    """Absolute imports' top-level names -> first line, minus names guarded by pytest.importorskip."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: dict[str, int] = {}
    skipped: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name.split(".")[0]
                found[name] = min(found.get(name, node.lineno), node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            name = node.module.split(".")[0]
            found[name] = min(found.get(name, node.lineno), node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "importorskip"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            skipped.add(node.args[0].value.split(".")[0])
    return {name: line for name, line in found.items() if name not in skipped}


def _is_local(name: str, importer: Path) -> bool:
    """First-party: a package/module at the repo root, in tests/, or next to the importing file."""
    for folder in (ROOT, ROOT / "tests", importer.parent):
        if (folder / name).is_dir() or (folder / f"{name}.py").is_file():
            return True
    return False


def _sources() -> list[tuple[Path, bool]]:
    """(file, is a test) for every Python file of the repository's packages, bench and tests."""
    files = [(p, False) for top in RUNTIME_DIRS for p in sorted((ROOT / top).rglob("*.py"))]
    return files + [(p, True) for p in sorted((ROOT / "tests").rglob("*.py"))]


def _undeclared(sources: list[tuple[Path, bool]]) -> list[str]:
    runtime, tests = _declared()
    dists = importlib.metadata.packages_distributions()
    problems = []
    for path, is_test in sources:
        allowed = tests if is_test else runtime
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        fetched = FETCHED_BY_FIXTURES.get(str(where), set())
        for name, line in _top_level_imports(path).items():
            if name in fetched or name in sys.stdlib_module_names or name == "__future__" or _is_local(name, path):
                continue
            # not installed here (e.g. tomli on 3.11+): assume the distribution is named like the import
            provided = {_norm(d) for d in dists.get(name, [])} or {_norm(name)}
            if not provided & allowed:
                problems.append(f"{where}:{line}: `{name}` ({sorted(provided)}) is not declared")
    return problems


def test_every_third_party_import_is_declared() -> None:
    problems = _undeclared(_sources())
    assert not problems, "declare these in pyproject.toml:\n" + "\n".join(problems)


def test_the_scan_sees_an_undeclared_import(tmp_path) -> None:
    """The check can fail: runtime code importing an installed but undeclared package (or a test-only one)
    is reported; the same imports in a test file guarded by importorskip are not."""
    module = tmp_path / "probe.py"
    module.write_text("import json\nimport pluggy  # installed with pytest, declared nowhere\nimport pytest\n")
    problems = _undeclared([(module, False)])
    assert [p.split(": ", 1)[0] for p in problems] == [f"{module}:2", f"{module}:3"], problems
    guarded = tmp_path / "test_probe.py"
    guarded.write_text("import pytest\npytest.importorskip('pluggy')\nimport pluggy\n")
    assert _undeclared([(guarded, True)]) == []
