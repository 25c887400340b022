"""`dspark vocab`: build the draft vocabulary from loss-masked token frequencies (issue #4)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import DataOpt, OutOpt, RecipeOpt, SetOpt, console, fail, need, resolve_recipe, stage_dir
from schemas.loading import DEFAULT_RECIPE


def vocab(
    recipe: RecipeOpt = DEFAULT_RECIPE,
    set_: SetOpt = None,
    out: OutOpt = None,
    data: DataOpt = None,
    size: Annotated[int | None, typer.Option(help="Draft vocab size (default: recipe vocab.draft_vocab_size).")] = None,
) -> None:
    """Count loss-masked tokens, keep the top N (ties by lower id), write d2t/t2d."""
    from dspark_data.store import StoreError
    from dspark_data.vocab import build_vocab

    r = resolve_recipe(recipe, set_)
    data = need(data, "--data", "the hidden-state (or regen) dataset to count")
    out_dir = stage_dir(r, "vocab", out)
    target_vocab: int | None = None
    try:
        from dspark_data.targets import load_target_info

        target_vocab = load_target_info(r.target.model, r.target.revision).vocab_size
    except Exception as exc:  # noqa: BLE001 - any failure: fall back to the ids seen, loudly
        console.print(f"[yellow]warning:[/yellow] target vocab size unknown ({exc}); t2d sized by the largest id seen")
    try:
        res = build_vocab(data, out_dir, size=size or r.vocab.draft_vocab_size, target_vocab_size=target_vocab)
    except StoreError as exc:
        fail(str(exc))
    state = "cached" if res.cached else "built"
    console.print(
        f"vocab {state}: {res.draft_vocab_size} of {res.target_vocab_size} ids, coverage {res.coverage:.2%} of "
        f"{res.tokens:,} loss-masked tokens ({res.samples} samples) -> {out_dir}"
    )
