"""Promise (issue #8, docs/reliability.md): nothing unpickles data or executes code from data.

A static scan (AST) of every package source for pickle and its cousins, `torch.load` without
`weights_only=True`, `numpy.load(allow_pickle=True)`, `eval`/`exec`, unsafe `yaml` loaders and
`trust_remote_code=True`; the scanner is itself tested on snippets that must be caught.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["cli", "dspark_data", "dspark_train", "schemas", "bench"]


PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader"}


def _name(node: ast.AST) -> str:
    """Dotted name of a call target: `torch.load`, `np.load`, `eval`."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, key: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == key), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def scan_source(text: str, where: str) -> list[str]:
    """Every unsafe deserialisation / code-execution construct in one module's source."""
    found: list[str] = []
    for node in ast.walk(ast.parse(text)):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{line}: import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append(f"{line}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            last = name.rsplit(".", 1)[-1]
            if name in {"eval", "exec", "builtins.eval", "builtins.exec"}:
                found.append(f"{line}: {name}()")
            elif name == "torch.load" and not _is_true(_kw(node, "weights_only")):
                found.append(f"{line}: torch.load without weights_only=True")
            elif last == "load" and _is_true(_kw(node, "allow_pickle")):
                found.append(f"{line}: {name}(allow_pickle=True)")
            elif name.startswith("yaml.") and last in {"unsafe_load", "full_load", "unsafe_load_all", "full_load_all"}:
                found.append(f"{line}: {name}")
            elif name in {"yaml.load", "yaml.load_all"}:
                loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                if _name(loader).rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
                    found.append(f"{line}: {name} without SafeLoader")
            elif last == "read_pickle":
                found.append(f"{line}: {name}")
            if _is_true(_kw(node, "trust_remote_code")):
                found.append(f"{line}: trust_remote_code=True")
    return found


def test_scanner_catches_every_pattern() -> None:
    bad = """
import pickle
from dill import loads
import numpy as np, torch, yaml, pandas as pd
torch.load(f)
torch.load(f, weights_only=False)
np.load(f, allow_pickle=True)
eval(text)
exec(code)
yaml.load(s)
yaml.load(s, Loader=yaml.Loader)
yaml.unsafe_load(s)
pd.read_pickle(f)
AutoModel.from_pretrained(p, trust_remote_code=True)
"""
    assert len(scan_source(bad, "snippet")) == 12
    good = """
import torch, yaml, numpy as np
torch.load(f, weights_only=True)
np.load(f)
yaml.safe_load(s)
yaml.load(s, Loader=yaml.SafeLoader)
model.eval()
"""
    assert scan_source(good, "snippet") == []


def test_no_code_path_unpickles_data() -> None:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 50
    found = [f for p in files for f in scan_source(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert found == [], "\n".join(found)
