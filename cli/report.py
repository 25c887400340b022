"""`dspark report`: an HTML page with the run's curves, acceptance and storage summary (issue #6)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import not_built


def report(run_dir: Annotated[Path, typer.Argument(help="A run directory, e.g. runs/tiny.")]) -> None:
    """Write report.html with PNG plots next to the run."""
    not_built("report", 6)
