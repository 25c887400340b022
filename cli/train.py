"""`dspark train`: the DSpark trainer over cached shards or a live stream (issues #5, #7)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import DataOpt, OutOpt, RecipeOpt, SeedOpt, SetOpt, not_built, resolve_recipe


def train(
    recipe: RecipeOpt = "tiny",
    set_: SetOpt = None,
    out: OutOpt = None,
    seed: SeedOpt = None,
    data: DataOpt = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimizer steps.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --out.")] = False,
    nproc_per_node: Annotated[int, typer.Option(help="Launch torchrun with this many processes.")] = 1,
    stream: Annotated[bool, typer.Option("--stream", help="Train on hidden states streamed from vLLM.")] = False,
) -> None:
    """Train the DSpark draft (DFlash backbone + Markov head + confidence head)."""
    resolve_recipe(recipe, set_, seed)
    not_built("train", 5)
