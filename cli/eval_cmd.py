"""`dspark eval`: acceptance measured offline or from a live vLLM server's counters (issue #6)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import OutOpt, RecipeOpt, SeedOpt, SetOpt, console, fail, need, resolve_recipe, stage_dir
from schemas.loading import DEFAULT_RECIPE


def eval_(
    recipe: RecipeOpt = DEFAULT_RECIPE,
    set_: SetOpt = None,
    out: OutOpt = None,
    seed: SeedOpt = None,
    draft: Annotated[
        Path | None, typer.Option(help="Exported draft dir (`dspark export --out`; required offline).")
    ] = None,
    server: Annotated[str | None, typer.Option(help="Measure a running vLLM server at this URL instead.")] = None,
    prompts: Annotated[list[str] | None, typer.Option(help="Prompt set(s): code, math, or a path.")] = None,
    mode: Annotated[list[str] | None, typer.Option(help="greedy and/or sampled (default: both).")] = None,
    num_prompts: Annotated[int | None, typer.Option(help="Prompts per set (default: recipe eval.num_prompts).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Default: recipe eval.max_new_tokens.")] = None,
    num_speculative_tokens: Annotated[int | None, typer.Option(help="Offline K (default: the export's).")] = None,
    target: Annotated[str | None, typer.Option(help="Offline: verifier path override (default: the export's).")] = None,
    dtype: Annotated[str | None, typer.Option(help="Offline target dtype (default: recipe target.dtype).")] = None,
    threads: Annotated[int | None, typer.Option(help="Offline: torch CPU threads (1 is fastest for tiny).")] = None,
    concurrency: Annotated[int, typer.Option(help="Live: requests in flight.")] = 16,
) -> None:
    """Report per-position acceptance and Avg Length in the seed card's table shape."""
    from dspark_train.eval.scope import MODES

    r = resolve_recipe(recipe, set_, seed)
    e = r.eval
    modes = mode or list(MODES)
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        fail(f"unknown --mode {unknown}: use {sorted(MODES)}")
    out_dir = stage_dir(r, "eval", out)
    common = dict(prompt_sets=prompts or list(e.prompt_sets), modes=modes, num_prompts=num_prompts or e.num_prompts,
                  max_new_tokens=max_new_tokens or e.max_new_tokens)
    try:
        if server:
            from dspark_train.eval.live import LiveOptions, run_live_eval

            summary = run_live_eval(LiveOptions(url=server, out_dir=out_dir, concurrency=concurrency, seed=r.seed,
                                                **common))
            where = out_dir / "vllm"
        else:
            from dspark_train.eval.offline import EvalOptions, run_offline_eval

            factory = None
            if e.backend == "vllm":  # the target in vLLM, the draft in torch; dspark_train never imports vLLM
                from dspark_data.capture.eval_target import vllm_target_factory

                factory = vllm_target_factory(r, common["max_new_tokens"])

            draft_dir = need(draft, "--draft", "the exported draft (`dspark export --out`)")
            opts = EvalOptions(
                draft_dir=draft_dir, out_dir=out_dir, target=target,
                target_revision=r.target.revision if target else None,
                num_speculative_tokens=num_speculative_tokens, dtype=dtype or r.target.dtype, seed=r.seed,
                num_threads=threads, backend=e.backend, target_factory=factory, **common,
            )
            summary = run_offline_eval(opts)
            where = out_dir
    except (FileNotFoundError, ValueError, OSError) as exc:
        fail(str(exc))
    console.print((where / "acceptance.md").read_text())
    lengths = {k: v for k, v in summary.items() if k.endswith("_avg_length")}
    state = "live" if server else ("offline (cached)" if summary.get("cached") else "offline")
    console.print(f"eval {state}: " + ", ".join(f"{k} {v:.2f}" for k, v in lengths.items())
                  + f" -> {where}")
