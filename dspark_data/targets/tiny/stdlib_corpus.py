"""Local training text for the tiny target: the Python standard library this interpreter ships with.

No hub or internet is reachable, so the tiny target's tokenizer and weights learn from text every
machine already has. The file list is sorted and capped in bytes so a build reads the same text in the
same order every time (on the same Python minor version, which is why build specs record it).
Functions with docstrings are extracted with `ast` to build chat conversations
(`dspark_data.targets.tiny.stdlib_chats`).
"""

from __future__ import annotations

import ast
import os
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Directories that are large, generated or full of deliberately odd encodings: not useful text.
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "__pycache__", "idle_test", "encodings"})


def python_tag() -> str:
    """The interpreter's minor version ("3.11"): the stdlib text, hence every build, depends on it."""
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(suffixes: tuple[str, ...] = (".py",)) -> list[Path]:
    """All stdlib files with these suffixes, in sorted relative-path order (deterministic)."""
    root = stdlib_root()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        found.extend(Path(dirpath) / name for name in filenames if name.endswith(suffixes))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def iter_stdlib_text(max_bytes: int) -> Iterator[str]:
    """Yield stdlib file contents in sorted order until `max_bytes` (UTF-8 bytes read) is reached."""
    used = 0
    for path in stdlib_files():
        data = path.read_bytes()[: max_bytes - used]
        if not data:
            break
        used += len(data)
        yield data.decode("utf-8", errors="replace")
        if used >= max_bytes:
            break


@dataclass(frozen=True)
class FunctionDoc:
    """One documented stdlib function: where it lives, its signature line, docstring and source."""

    module: str  # dotted module name, e.g. "json.decoder"
    name: str  # function name
    signature: str  # "def name(args):" as written (first line of the def)
    doc: str  # cleaned docstring
    source: str  # full source of the function


def _module_name(path: Path) -> str:
    rel = path.relative_to(stdlib_root()).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def stdlib_functions(max_items: int, max_per_file: int = 8, max_source_chars: int = 1200) -> list[FunctionDoc]:
    """Up to `max_items` public functions or methods with a docstring, at most `max_per_file` per file.

    The per-file cap spreads the set over many modules (tkinter alone has hundreds of documented
    methods). Functions whose source exceeds `max_source_chars` are skipped (too long for a tiny context).
    """
    out: list[FunctionDoc] = []
    for path in stdlib_files():
        if len(out) >= max_items:
            break
        text = path.read_text("utf-8", errors="replace")
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        lines = text.splitlines()
        module = _module_name(path)
        taken = 0
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < 20 or node.end_lineno is None:
                continue
            source = "\n".join(lines[node.lineno - 1 : node.end_lineno])
            if len(source) > max_source_chars:
                continue
            signature = lines[node.lineno - 1].strip()
            out.append(FunctionDoc(module, node.name, signature, doc.strip(), _dedent(source)))
            taken += 1
            if len(out) >= max_items or taken >= max_per_file:
                break
    return out


def _dedent(source: str) -> str:
    lines = source.splitlines()
    indent = len(lines[0]) - len(lines[0].lstrip())
    return "\n".join(line[indent:] if line[:indent].strip() == "" else line for line in lines)
