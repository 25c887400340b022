"""`dspark dump-hidden`: capture the target's hidden states into the shard store. Thin: flags -> recipe ->
`dspark_data.capture.dump_hidden`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import (
    DataOpt,
    LimitOpt,
    OutOpt,
    RecipeOpt,
    SeedOpt,
    SetOpt,
    console,
    fail,
    need,
    resolve_recipe,
    stage_dir,
    stopped,
)
from schemas.loading import DEFAULT_RECIPE


def dump_hidden(
    recipe: RecipeOpt = DEFAULT_RECIPE,
    set_: SetOpt = None,
    out: OutOpt = None,
    seed: SeedOpt = None,
    data: DataOpt = None,
    limit: LimitOpt = None,
    backend: Annotated[str | None, typer.Option(help="vllm (default) or hf (transformers reference).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print projected size and file count only.")] = False,
    num_shards: Annotated[
        int | None, typer.Option(help="Split samples across N machines (default: $WORLD_SIZE, $SLURM_NTASKS or 1).")
    ] = None,
    shard_index: Annotated[
        int | None, typer.Option(help="This machine's part, 0..N-1 (default: $RANK, $SLURM_PROCID or 0).")
    ] = None,
    sample_from: Annotated[Path | None, typer.Option(help="--dry-run: take codec ratios from a small capture of "
                                                          "this target (or a `dspark codecs --work` dir).")] = None,
) -> None:
    """Run the target over regenerated conversations and store aux + last-layer hidden states."""
    from dspark_data.capture import CaptureConfigError
    from dspark_data.capture import dump_hidden as run_dump
    from dspark_data.capture.spool import SpoolError
    from dspark_data.prompts.select import shard_from_env
    from dspark_data.shutdown import StopRequested
    from dspark_data.store import StoreError

    sets = list(set_ or []) + ([f"capture.backend={backend}"] if backend is not None else [])
    cfg = resolve_recipe(recipe, sets, seed)
    regen_dir = need(data, "--data", "the regen dataset (`dspark regen --out`)")
    out_dir = stage_dir(cfg, "hidden", out)
    if sample_from is not None and not sample_from.is_dir():
        fail(f"--sample-from {sample_from}: not a directory (give a hidden-state capture of this target)")
    try:
        parts, index = shard_from_env(num_shards, shard_index)
        summary = run_dump(cfg, regen_dir, out_dir, limit=limit, dry_run=dry_run, console=console,
                           num_shards=parts, shard_index=index, sample_from=sample_from)
    except StopRequested as exc:  # SIGTERM: everything committed stays; rerun the same command to resume
        stopped(exc)
    except (CaptureConfigError, StoreError, SpoolError, OSError, ValueError) as exc:  # OSError: e.g. no weights
        fail(str(exc))
    if dry_run:
        return
    state = "cached (complete, same settings)" if summary["cached"] else f"{summary['tokens_per_s']:,.0f} tok/s"
    errors = f", {summary['errors']} errors {summary['error_counts']}" if summary["errors"] else ""
    console.print(
        f"dump-hidden: {summary['samples']} samples, {summary['tokens']:,} tokens, "
        f"{summary['bytes_per_token']:,.0f} B/token ({summary['codec']}, {summary['compression_ratio']:.2f}x)"
        f"{errors} — {state} -> {summary['out_dir']}"
    )
