"""Options shared by every command, recipe resolution, and the default run layout.

Default layout: `runs/<recipe name>/<stage>/`, so each stage finds the previous one's output
without flags, and `--out` / `--data` point elsewhere when needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from schemas.loading import RecipeError, load_recipe
from schemas.recipe import Recipe

console = Console(stderr=True)

STAGES = ("regen", "hidden", "vocab", "train", "export", "eval", "report")

RecipeOpt = Annotated[str, typer.Option("--recipe", "-r", help="Built-in recipe name or a recipe file path.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe field, e.g. --set train.lr=3e-4 (repeatable)."),
]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output directory (default runs/<recipe>/<stage>).")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Run seed (overrides the recipe's).")]
DataOpt = Annotated[
    Path | None, typer.Option("--data", "-d", help="Input dataset directory (default: previous stage).")
]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Process at most N samples.")]


def resolve_recipe(recipe: str, sets: list[str] | None, seed: int | None = None) -> Recipe:
    """Resolve the recipe or exit 2 with the message naming the bad key, value or file."""
    try:
        return load_recipe(recipe, sets or [], seed=seed)
    except RecipeError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def stage_dir(recipe: Recipe, stage: str, override: Path | None = None) -> Path:
    """Where a stage reads or writes by default: runs/<recipe>/<stage>."""
    assert stage in STAGES, stage
    return override if override is not None else Path("runs") / recipe.name / stage


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line error (what went wrong and how to fix it) and exit."""
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)
