"""Options shared by every command, recipe resolution, and the default run layout.

Default OUTPUT layout: `runs/<recipe name>/<stage>/` under the working directory (`--out` points elsewhere).
Inputs have no such default: a stage reads only what it is given (`--data`, `--checkpoint`, `--draft`) or what
that input records or has beside it, never the working directory's `runs/`, so a folder left behind by an
earlier run (e.g. `make demo`) cannot change what a command does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from dspark_data import run_layout
from schemas.loading import RecipeError, load_recipe
from schemas.recipe import Recipe

console = Console(stderr=True)

RecipeOpt = Annotated[str, typer.Option("--recipe", "-r", help="Built-in recipe name or a recipe file path.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe field, e.g. --set train.lr=3e-4 (repeatable)."),
]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output directory (default runs/<recipe>/<stage>).")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Run seed (overrides the recipe's).")]
DataOpt = Annotated[
    Path | None, typer.Option("--data", "-d", help="Input dataset directory (required: the previous stage's --out).")
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
    """Where a stage WRITES: `override` (--out), else runs/<recipe>/<stage>. Never used to find a stage's input."""
    return override if override is not None else run_layout.stage_dir(recipe.name, stage)


def need(value: Path | None, flag: str, what: str) -> Path:
    """An input flag's value, or exit 2 naming the flag: inputs are never looked up in the working directory."""
    if value is None:
        fail(f"pass {flag} DIR: {what} (inputs are not looked up in the working directory)", code=2)
    return value


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line error (what went wrong and how to fix it) and exit."""
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def stopped(exc: Exception) -> NoReturn:
    """A stage stopped on SIGTERM at a safe point: say so and exit 143 (128 + SIGTERM), as schedulers expect."""
    from dspark_data.shutdown import EXIT_TERMINATED

    console.print(f"[yellow]{exc}[/yellow]; rerun the same command to resume")
    raise typer.Exit(EXIT_TERMINATED)

