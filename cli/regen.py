"""`dspark regen`: re-answer prompts with the target (issue #3)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import LimitOpt, OutOpt, RecipeOpt, SeedOpt, SetOpt, not_built, resolve_recipe


def regen(
    recipe: RecipeOpt = "tiny",
    set_: SetOpt = None,
    out: OutOpt = None,
    seed: SeedOpt = None,
    limit: LimitOpt = None,
    backend: Annotated[str | None, typer.Option(help="vllm (in-process engine) or openai (servers).")] = None,
    endpoint: Annotated[list[str] | None, typer.Option(help="OpenAI-compatible base URL (repeatable).")] = None,
    num_shards: Annotated[int, typer.Option(help="Split prompts across N machines.")] = 1,
    shard_index: Annotated[int, typer.Option(help="This machine's part, 0..N-1.")] = 0,
) -> None:
    """Regenerate conversations with the target itself, keeping exact token ids."""
    resolve_recipe(recipe, set_, seed)
    not_built("regen", 3)
