"""`dspark vocab`: build the draft vocabulary from loss-masked token frequencies (issue #4)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import DataOpt, OutOpt, RecipeOpt, SetOpt, not_built, resolve_recipe


def vocab(
    recipe: RecipeOpt = "tiny",
    set_: SetOpt = None,
    out: OutOpt = None,
    data: DataOpt = None,
    size: Annotated[int | None, typer.Option(help="Draft vocab size (default: recipe vocab.draft_vocab_size).")] = None,
) -> None:
    """Count loss-masked tokens, keep the top N (ties by lower id), write d2t/t2d."""
    resolve_recipe(recipe, set_)
    not_built("vocab", 4)
