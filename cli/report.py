"""`dspark report`: an HTML page with the run's curves, acceptance and storage summary (issue #6)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import console, fail


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, e.g. runs/tiny.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output dir (default RUN_DIR/report).")] = None,
) -> None:
    """Write report.html with PNG plots next to the run."""
    from dspark_train.report import build_report

    try:
        summary = build_report(run_dir, out)
    except FileNotFoundError as exc:
        fail(str(exc))
    if summary["missing"]:
        console.print(f"[yellow]report: no data for {', '.join(summary['missing'])} (see the page)[/yellow]")
    console.print(f"report -> {summary['report']}")
