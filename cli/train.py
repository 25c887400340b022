"""`dspark train`: the DSpark trainer over cached shards or a live stream (issues #5, #7).

Thin on purpose: the arguments go unchanged to `dspark_train.entrypoint.main`, the same entry point as
`python -m dspark_train` and every torchrun rank, so both commands parse one flag table
(`dspark_train/flags.py`) and cannot drift. `--nproc-per-node N` re-launches the same arguments under torchrun
(DDP; gloo on CPU, NCCL on GPU). Multi-node: run `torchrun ... -m dspark_train` on every node (docs/training.md).
"""

from __future__ import annotations

import typer

# Typer must pass every argument (and --help) through untouched: the flags live in dspark_train/flags.py.
CONTEXT_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def train(ctx: typer.Context) -> None:
    """Train the DSpark draft (DFlash backbone + Markov head + confidence head); `dspark train --help` for flags."""
    from dspark_train.entrypoint import main

    raise typer.Exit(main(list(ctx.args), prog="dspark train"))
