"""`dspark train`: the DSpark trainer over cached shards or a live stream (issues #5, #7).

One process trains in-process (`dspark_train.train.run`); `--nproc-per-node N` re-launches the same
command under torchrun (DDP; gloo on CPU, NCCL on GPU). Multi-node: run
`torchrun ... -m dspark_train` on every node (docs/training.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.common import DataOpt, OutOpt, RecipeOpt, SeedOpt, SetOpt, console, fail, resolve_recipe
from dspark_data.shutdown import run_forwarding_signals


def _torchrun_argv(
    nproc: int, recipe: str, sets: list[str], seed: int | None, out, data, max_steps, resume: bool, init_from=None
) -> list[str]:
    """The same command, as `torchrun --standalone --nproc-per-node N -m dspark_train ...`."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    argv += ["-m", "dspark_train", "--recipe", recipe]
    for item in sets:
        argv += ["--set", item]
    for flag, value in (("--seed", seed), ("--out", out), ("--data", data), ("--max-steps", max_steps),
                        ("--init-from", init_from)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--resume"] if resume else [])


def _stream_argv(stream: bool, endpoints: list[str], cache_dir: Path | None) -> list[str]:
    """The --stream flags of `python -m dspark_train` (the token travels in the environment)."""
    if not stream:
        return []
    argv = ["--stream"] + [a for url in endpoints for a in ("--endpoint", url)]
    return argv + (["--cache-dir", str(cache_dir)] if cache_dir is not None else [])


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
    endpoint: Annotated[
        list[str] | None, typer.Option(help="With --stream: `dspark serve-target` URL (repeatable).")
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="With --stream: tee samples into this cache (hybrid).")] = None,
    token: Annotated[str | None, typer.Option(help="With --stream: token (prefer $DSPARK_STREAM_TOKEN).")] = None,
    skip_samples: Annotated[
        list[str] | None,
        typer.Option("--skip-samples", help="Leave out sample ids ID[,ID...] (damaged ones `dspark verify` names)."),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option("--init-from", help="Start from a speculators-format draft (export, DFlash, speculators)."),
    ] = None,
) -> None:
    """Train the DSpark draft (DFlash backbone + Markov head + confidence head)."""
    resolved = resolve_recipe(recipe, set_, seed)
    from dspark_train.data.stream_source import StreamError, stream_overrides

    try:  # --stream: data is the regen dataset, samples come from the gateways (docs/streaming.md)
        streaming = stream_overrides(resolved, stream, endpoint or [], cache_dir, data=data, out=out, token=token)
    except StreamError as exc:
        fail(str(exc), code=2)
    if nproc_per_node > 1:
        argv = _torchrun_argv(nproc_per_node, recipe, set_ or [], seed, out, data, max_steps, resume, init_from)
        argv += _stream_argv(stream, endpoint or [], cache_dir)
        argv += [a for v in skip_samples or [] for a in ("--skip-samples", v)]
        env = {**os.environ, "DSPARK_STREAM_TOKEN": token} if token else None  # not in argv: ps shows argv
        raise typer.Exit(run_forwarding_signals(argv, env))  # SIGTERM reaches torchrun, which stops its ranks

    from dspark_data.shutdown import EXIT_TERMINATED
    from dspark_train.checkpoint import CheckpointMismatch, CheckpointWriteError
    from dspark_train.data.checks import DataMismatch
    from dspark_train.resume import RunConflict
    from dspark_train.train import default_options, run, split_ids
    from dspark_train.warm_start import InitFromError

    opts = default_options(
        resolved, out_dir=out, data_dir=streaming.pop("data_dir", data), max_steps=max_steps, resume=resume,
        skip_samples=split_ids(skip_samples), init_from=init_from, **streaming
    )
    try:
        summary = run(resolved, opts)
    except (DataMismatch, RunConflict, CheckpointMismatch, CheckpointWriteError, FileNotFoundError, StreamError,
            InitFromError) as exc:
        fail(str(exc))
    if summary.get("preempted"):
        console.print(f"train preempted at step {summary['steps']}: rerun the same command to continue")
        raise typer.Exit(EXIT_TERMINATED)
    state = "reused (cached)" if summary.get("cached") else "trained"
    length = summary.get("val_mean_accepted_length")
    console.print(
        f"train {state}: {summary['steps']} steps, {summary['tokens']:,} tokens"
        + (f", val mean accepted length {length:.3f}" if length is not None else "")
        + f" -> {opts.out_dir}"
    )
