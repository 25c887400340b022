"""`dspark export`: write a checkpoint vLLM serves as a DSpark (or DFlash) speculator (issue #6)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import OutOpt, RecipeOpt, SetOpt, console, fail, need, resolve_recipe, stage_dir
from schemas.loading import DEFAULT_RECIPE


def export(
    recipe: RecipeOpt = DEFAULT_RECIPE,
    set_: SetOpt = None,
    out: OutOpt = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Train dir (its latest checkpoint) or one step dir (required).")
    ] = None,
    format_: Annotated[str, typer.Option("--format", help="dspark (default) or dflash (backbone only).")] = "dspark",
    num_speculative_tokens: Annotated[
        int | None, typer.Option(help="speculative_tokens written for vLLM (default: recipe eval value).")
    ] = None,
    dtype: Annotated[str, typer.Option(help="Weight dtype: bfloat16, float16 or float32.")] = "bfloat16",
    verifier: Annotated[
        str | None, typer.Option(help="Verifier name_or_path to record (default: the run's target).")
    ] = None,
) -> None:
    """Export the trained draft in the speculators format vLLM reads."""
    from dspark_train.export import export_draft

    r = resolve_recipe(recipe, set_)
    source = need(checkpoint, "--checkpoint", "the train directory (`dspark train --out`) or one of its steps")
    out_dir = stage_dir(r, "export", out)
    try:
        summary = export_draft(
            source, out_dir, fmt=format_, num_speculative_tokens=num_speculative_tokens, dtype=dtype, verifier=verifier
        )
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    state = "cached" if summary["cached"] else "exported"
    console.print(
        f"export {state}: {summary['format']} draft, step {summary['step']}, {summary['num_tensors']} tensors "
        f"({summary['bytes'] / 1e6:.1f} MB), K={summary['num_speculative_tokens']}, verifier {summary['verifier']} "
        f"-> {out_dir}"
    )
