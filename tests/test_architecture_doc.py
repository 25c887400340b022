"""docs/architecture.md matches the code (issue #14): its module table names every module, and every
module it names exists.

Why a test: the table is how a newcomer finds where a concept lives. A module added without a row, or a
row left behind by a move, is the drift that made the table wrong before; this catches it in the change
that causes it.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("schemas", "dspark_data", "dspark_train", "cli")
_PATH = re.compile(r"`((?:schemas|dspark_data|dspark_train|cli)/[A-Za-z0-9_/]+\.py)`")


def _modules() -> set[str]:
    """Every module file; a package's `__init__.py` is its section heading's business, not a row."""
    return {str(p.relative_to(ROOT)) for top in PACKAGES for p in (ROOT / top).rglob("*.py") if p.name != "__init__.py"}


def _table_rows() -> set[str]:
    """Paths in the module table's first column (`| `path` | job |`)."""
    rows = set()
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells and (m := _PATH.fullmatch(cells[0])):
            rows.add(m.group(1))
    return rows


def test_every_module_has_a_row() -> None:
    missing = sorted(_modules() - _table_rows())
    assert missing == [], f"modules without a row in {DOC.name}: {missing}"


def test_every_named_module_exists() -> None:
    named = set(_PATH.findall(DOC.read_text()))
    gone = sorted(p for p in named if not (ROOT / p).is_file())
    assert gone == [], f"{DOC.name} names modules that do not exist: {gone}"
