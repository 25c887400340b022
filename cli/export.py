"""`dspark export`: write a checkpoint vLLM serves as a DSpark (or DFlash) speculator (issue #6)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import OutOpt, RecipeOpt, SetOpt, not_built, resolve_recipe


def export(
    recipe: RecipeOpt = "tiny",
    set_: SetOpt = None,
    out: OutOpt = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Training checkpoint dir (default: latest).")] = None,
    format_: Annotated[str, typer.Option("--format", help="dspark (default) or dflash (backbone only).")] = "dspark",
) -> None:
    """Export the trained draft in the speculators format vLLM reads."""
    resolve_recipe(recipe, set_)
    not_built("export", 6)
