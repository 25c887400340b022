"""Entry point of one training process: parse flags, build the trainer, train, tear down.

    python -m dspark_train --recipe tiny --data runs/tiny/hidden --max-steps 50
    torchrun --nproc-per-node 2 -m dspark_train --recipe tiny --data D   # every rank runs this module
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m dspark_train -r R -d D

`dspark train` forwards its arguments here unchanged: both parse `dspark_train.flags.parser()`, so their flags
cannot drift. `--nproc-per-node N` (N > 1, outside torchrun) re-launches the same arguments under torchrun.
Inputs are never looked up in the working directory: `--data` names the hidden-state dataset, and the draft
vocab is `--vocab` or the one `dspark vocab` built from that data beside it (DATA/../vocab). Only the output
has a default, `runs/<recipe>/train`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from dspark_data.mismatch import DataMismatch
from dspark_data.run_layout import stage_dir
from dspark_data.shutdown import EXIT_TERMINATED, GracefulStop, run_forwarding_signals
from dspark_data.stream.client import StreamError
from dspark_data.vocab import VOCAB_FILE, VOCAB_MANIFEST
from dspark_train.checkpoint import CheckpointMismatch, CheckpointWriteError
from dspark_train.flags import parser, stream_overrides
from dspark_train.parallelize import destroy_distributed
from dspark_train.resume import RunConflict
from dspark_train.run_plan import plan_run
from dspark_train.trainer import Trainer, TrainOptions, cached_summary
from dspark_train.warm_start import InitFromError
from schemas.loading import RecipeError, load_recipe
from schemas.recipe import Recipe
from schemas.store import Manifest, VocabManifest


def default_options(recipe: Recipe, **overrides: Any) -> TrainOptions:
    """TrainOptions from the entry points' flags: the output defaults to runs/<recipe>/train; the inputs
    (data, vocab) come only from what was given (the vocab may be found beside the data, `vocab_beside`)."""
    out = overrides.pop("out_dir", None) or stage_dir(recipe.name, "train")
    data = overrides.pop("data_dir", None)
    vocab = overrides.pop("vocab_path", None)
    if vocab is None and data is not None and overrides.get("synthetic") is None:
        vocab = vocab_beside(Path(data))
    elif vocab is not None and Path(vocab).is_dir():
        vocab = Path(vocab) / VOCAB_FILE
    return TrainOptions(out_dir=Path(out), data_dir=None if data is None else Path(data), vocab_path=vocab,
                        **overrides)


def vocab_beside(data_dir: Path) -> Path | None:
    """The `vocab.safetensors` of DATA/../vocab when its vocab.json says it was counted from this very
    dataset (same manifest fingerprint and shard checksums), else None. Why beside and checked: the run layout
    puts `vocab/` next to `hidden/`, but a vocab of other data (or of nothing) must not be picked up by accident."""
    vocab_dir = data_dir.parent / "vocab"
    try:
        data = Manifest.model_validate_json((data_dir / "manifest.json").read_text())
        vocab_fp = VocabManifest.model_validate_json((vocab_dir / VOCAB_MANIFEST).read_text()).fingerprint
    except (OSError, ValueError):
        return None
    same = (vocab_fp.get("data_fingerprint") == data.fingerprint_hash
            and vocab_fp.get("data_shards") == [e.sha256 for e in data.shards])
    path = vocab_dir / VOCAB_FILE
    return path if same and path.is_file() else None


def run(recipe: Recipe, opts: TrainOptions) -> dict[str, Any]:
    """Train (or reuse) and return the summary; always releases the loader threads and process group.

    The trainer turns on `torch.use_deterministic_algorithms` (CPU); the caller's setting is restored after,
    so a library user (or a test session) is not left in deterministic mode.
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        # SIGTERM from here on (setup included) is a request: finish the step, checkpoint, exit (preempt.py).
        with GracefulStop("dspark train", grace_s=recipe.train.preempt_grace_s or None) as stop:
            run_plan = plan_run(recipe, opts)
            if run_plan.cached:
                return cached_summary(run_plan, opts.out_dir)
            return Trainer(recipe, opts, stop=stop, run=run_plan).train()
    finally:
        torch.use_deterministic_algorithms(deterministic)
        destroy_distributed()


def split_ids(values: list[str] | None) -> tuple[str, ...]:
    """`--skip-samples a,b --skip-samples c` -> ("a", "b", "c")."""
    return tuple(x.strip() for v in values or [] for x in v.split(",") if x.strip())


def torchrun_argv(argv: list[str], nproc: int) -> list[str]:
    """The same arguments under `torchrun --standalone --nproc-per-node N -m dspark_train`; the ranks get
    `--nproc-per-node 1` (the last value wins) and no `--token` (it travels in the environment: ps shows argv)."""
    kept: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--token":
            skip = True
        elif not a.startswith("--token="):
            kept.append(a)
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return [*head, "-m", "dspark_train", *kept, "--nproc-per-node", "1"]


def print_memory_plan(recipe: Recipe, world_size: int, gpu_memory: str | None) -> int:
    """`--dry-run`: plan on fake tensors (no allocation), print the table; returns the exit code."""
    from dspark_train.memory_plan import format_plan, parse_bytes, plan_for_recipe

    try:
        memory = parse_bytes(gpu_memory) if gpu_memory is not None else None
        plan, title = plan_for_recipe(recipe, world_size=world_size, gpu_memory=memory)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_plan(plan, title))
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m dspark_train") -> int:
    """Parse the shared flags, then train in this process (or launch torchrun for --nproc-per-node N)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser(prog).parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.sets, seed=args.seed)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        return print_memory_plan(recipe, args.nproc_per_node, args.gpu_memory)
    try:
        stream = stream_overrides(recipe, args.stream, args.endpoint, args.cache_dir, data=args.data, out=args.out,
                                  token=args.token)
    except StreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        env = {**os.environ, "DSPARK_STREAM_TOKEN": args.token} if args.token else None
        # SIGTERM reaches torchrun, which stops its ranks (each checkpoints and exits: preempt.py)
        return run_forwarding_signals(torchrun_argv(argv, args.nproc_per_node), env)
    opts = default_options(
        recipe,
        out_dir=args.out,
        data_dir=stream.pop("data_dir", args.data),
        vocab_path=args.vocab,
        max_steps=args.max_steps,
        resume=args.resume,
        device=args.device,
        attention=args.attention,
        synthetic=args.synthetic,
        stop_after=args.stop_after,
        progress=not args.no_progress,
        skip_samples=split_ids(args.skip_samples),
        init_from=args.init_from,
        **stream,
    )
    try:
        summary = run(recipe, opts)
    except (DataMismatch, RunConflict, CheckpointMismatch, CheckpointWriteError, FileNotFoundError, StreamError,
            InitFromError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if summary.get("preempted"):  # checkpoint written; 143 tells the scheduler the job was ended by SIGTERM
        return EXIT_TERMINATED
    if "steps" in summary and int(os.environ.get("RANK", "0")) == 0:
        state = "reused (cached)" if summary.get("cached") else "trained"
        length = summary.get("val_mean_accepted_length")
        print(f"train {state}: {summary['steps']} steps, {summary['tokens']:,} tokens"
              + (f", val mean accepted length {length:.3f}" if length is not None else "")
              + f" -> {opts.out_dir}", file=sys.stderr)
    return 0
