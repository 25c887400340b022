"""Entry point of one training process: parse flags, build the trainer, train, tear down.

    python -m dspark_train --recipe tiny --max-steps 50
    torchrun --nproc-per-node 2 -m dspark_train --recipe tiny        # every rank runs this module
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m dspark_train -r R

`dspark train` calls `run` in-process, or launches this module under torchrun for `--nproc-per-node`.
Defaults follow the run layout: data `runs/<recipe>/hidden`, vocab `runs/<recipe>/vocab/vocab.safetensors`,
output `runs/<recipe>/train`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from dspark_train.checkpoint import CheckpointMismatch, CheckpointWriteError
from dspark_train.data.checks import DataMismatch
from dspark_train.data.stream_source import StreamError, stream_overrides
from dspark_train.parallelize import destroy_distributed
from dspark_train.resume import RunConflict
from dspark_train.trainer import Trainer, TrainOptions
from schemas.loading import RecipeError, load_recipe
from schemas.recipe import Recipe

VOCAB_FILE = "vocab.safetensors"


def default_options(recipe: Recipe, **overrides: Any) -> TrainOptions:
    """TrainOptions with the run layout's defaults for every path not given (None)."""
    root = Path("runs") / recipe.name
    out = overrides.pop("out_dir", None) or root / "train"
    data = overrides.pop("data_dir", None) or root / "hidden"
    vocab = overrides.pop("vocab_path", None)
    if vocab is None and (root / "vocab" / VOCAB_FILE).is_file():
        vocab = root / "vocab" / VOCAB_FILE
    elif vocab is not None and Path(vocab).is_dir():
        vocab = Path(vocab) / VOCAB_FILE
    return TrainOptions(out_dir=Path(out), data_dir=Path(data), vocab_path=vocab, **overrides)


def run(recipe: Recipe, opts: TrainOptions) -> dict[str, Any]:
    """Train (or reuse) and return the summary; always releases the loader threads and process group.

    The trainer turns on `torch.use_deterministic_algorithms` (CPU); the caller's setting is restored after,
    so a library user (or a test session) is not left in deterministic mode.
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return Trainer(recipe, opts).train()
    finally:
        torch.use_deterministic_algorithms(deterministic)
        destroy_distributed()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dspark_train", description=__doc__.split("\n")[0])
    p.add_argument("--recipe", "-r", default="tiny", help="Built-in recipe name or recipe file.")
    p.add_argument("--set", "-s", action="append", default=[], dest="sets", help="Override: key.path=value.")
    p.add_argument("--seed", type=int, default=None, help="Run seed (overrides the recipe's).")
    p.add_argument("--out", "-o", type=Path, default=None, help="Train directory (default runs/<recipe>/train).")
    p.add_argument("--data", "-d", type=Path, default=None, help="Hidden-state dataset directory.")
    p.add_argument("--vocab", type=Path, default=None, help="vocab.safetensors or its directory.")
    p.add_argument("--max-steps", type=int, default=None, help="Stop after N optimizer steps.")
    p.add_argument("--resume", action="store_true", help="Continue the checkpoint in --out even if settings changed.")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available).")
    p.add_argument("--attention", choices=["sdpa", "flex"], default=None, help="Attention kernel (default by device).")
    p.add_argument("--synthetic", type=int, default=None, help="Train on N synthetic samples (smoke tests, bench).")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulated kill
    p.add_argument("--no-progress", action="store_true", help="No progress bar (log lines instead).")
    p.add_argument("--stream", action="store_true", help="Stream states from `dspark serve-target` (--data: regen).")
    p.add_argument("--endpoint", action="append", default=[], help="With --stream: gateway URL (repeatable).")
    p.add_argument("--cache-dir", type=Path, default=None, help="With --stream: tee samples into this store cache.")
    p.add_argument("--skip-samples", action="append", default=[], metavar="ID[,ID...]",
                   help="Leave these sample ids out (damaged ones named by `dspark verify`); repeatable.")
    return p


def split_ids(values: list[str] | None) -> tuple[str, ...]:
    """`--skip-samples a,b --skip-samples c` -> ("a", "b", "c")."""
    return tuple(x.strip() for v in values or [] for x in v.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.sets, seed=args.seed)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        stream = stream_overrides(recipe, args.stream, args.endpoint, args.cache_dir, data=args.data, out=args.out)
    except StreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
        **stream,
    )
    try:
        summary = run(recipe, opts)
    except (DataMismatch, RunConflict, CheckpointMismatch, CheckpointWriteError, FileNotFoundError, StreamError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if "steps" in summary and int(os.environ.get("RANK", "0")) == 0:
        state = "reused (cached)" if summary.get("cached") else "trained"
        print(f"train {state}: {summary['steps']} steps, {summary['tokens']:,} tokens -> {opts.out_dir}",
              file=sys.stderr)
    return 0
