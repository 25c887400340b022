"""`dspark dump-hidden`: capture the target's hidden states into the shard store (issue #4)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import DataOpt, LimitOpt, OutOpt, RecipeOpt, SeedOpt, SetOpt, not_built, resolve_recipe


def dump_hidden(
    recipe: RecipeOpt = "tiny",
    set_: SetOpt = None,
    out: OutOpt = None,
    seed: SeedOpt = None,
    data: DataOpt = None,
    limit: LimitOpt = None,
    backend: Annotated[str | None, typer.Option(help="vllm (default) or hf (transformers reference).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print projected size and file count only.")] = False,
) -> None:
    """Run the target over regenerated conversations and store aux + last-layer hidden states."""
    resolve_recipe(recipe, set_, seed)
    not_built("dump-hidden", 4)
