"""`dspark eval`: acceptance measured offline or from a live vLLM server's counters (issue #6)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import OutOpt, RecipeOpt, SeedOpt, SetOpt, not_built, resolve_recipe


def eval_(
    recipe: RecipeOpt = "tiny",
    set_: SetOpt = None,
    out: OutOpt = None,
    seed: SeedOpt = None,
    draft: Annotated[Path | None, typer.Option(help="Exported draft dir (default: runs/<recipe>/export).")] = None,
    server: Annotated[str | None, typer.Option(help="Measure a running vLLM server at this URL instead.")] = None,
    prompts: Annotated[list[str] | None, typer.Option(help="Prompt set(s): code, math, or a path.")] = None,
) -> None:
    """Report per-position acceptance and Avg Length in the seed card's table shape."""
    resolve_recipe(recipe, set_, seed)
    not_built("eval", 6)
