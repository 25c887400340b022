"""`dspark regen`: re-answer prompts with the target (issue #3). Thin: flags -> recipe -> `run_regen`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.common import LimitOpt, OutOpt, RecipeOpt, SeedOpt, SetOpt, console, fail, resolve_recipe, stage_dir, stopped
from dspark_data.shutdown import StopRequested
from schemas.loading import DEFAULT_RECIPE


def regen(
    recipe: RecipeOpt = DEFAULT_RECIPE,
    set_: SetOpt = None,
    out: OutOpt = None,
    seed: SeedOpt = None,
    limit: LimitOpt = None,
    backend: Annotated[str | None, typer.Option(help="vllm (in-process engine) or openai (servers).")] = None,
    endpoint: Annotated[list[str] | None, typer.Option(help="OpenAI-compatible base URL (repeatable).")] = None,
    num_shards: Annotated[
        int | None, typer.Option(help="Split prompts across N machines (default: $WORLD_SIZE or 1).")
    ] = None,
    shard_index: Annotated[int | None, typer.Option(help="This machine's part, 0..N-1 (default: $RANK or 0).")] = None,
    turns: Annotated[str | None, typer.Option(help="first: answer the first user turn; all: every user turn.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output made with other settings.")] = False,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Regenerate conversations with the target itself, keeping exact token ids."""
    from dspark_data.prompts.select import shard_from_env
    from dspark_data.regen import run_regen
    from dspark_data.store.manifest import StoreError

    sets = list(set_ or [])
    if backend is not None:
        sets.append(f"regen.backend={backend}")
    if endpoint:
        sets.append(f"regen.endpoints={json.dumps(endpoint)}")
    if turns is not None:
        sets.append(f"prompts.turns={turns}")
    cfg = resolve_recipe(recipe, sets, seed)
    if limit is not None:
        num = min(limit, cfg.prompts.num_prompts or limit)
        cfg = cfg.model_copy(update={"prompts": cfg.prompts.model_copy(update={"num_prompts": num})})
    try:
        parts, index = shard_from_env(num_shards, shard_index)
        summary = run_regen(
            cfg,
            stage_dir(cfg, "regen", out),
            num_shards=parts,
            shard_index=index,
            overwrite=overwrite,
            progress=progress,
        )
    except StopRequested as exc:  # SIGTERM: everything committed stays; rerun the same command to resume
        stopped(exc)
    except (StoreError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    state = "cached (complete, same settings)" if summary.cached else f"{summary.tokens_per_s:.0f} generated tok/s"
    console.print(
        f"regen: {summary.samples} samples, {summary.generated_tokens} generated tokens, "
        f"{summary.errors} errors {summary.errors_by_reason or ''} — {state}"
    )
    if summary.samples == 0 and summary.errors:
        fail(f"every prompt failed ({summary.errors_by_reason}); see errors.jsonl in {stage_dir(cfg, 'regen', out)}")
