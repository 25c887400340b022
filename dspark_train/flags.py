"""The one flag definition of the trainer, shared by `dspark train` and `python -m dspark_train`.

Why one: the two entry points used to declare their flags separately and drifted (`--vocab` existed only
in one). `dspark train` now forwards its arguments untouched to `dspark_train.entrypoint.main`, which parses them
with `parser()` below; `torchrun ... -m dspark_train` ranks parse the same flags. Adding a flag is one
`p.add_argument(...)` line here (plus reading `args.<name>` where it is used).

`stream_overrides` turns the `--stream` flags into `TrainOptions` fields, so the data layer
(`dspark_train/data/stream_*.py`) takes plain values and never sees a flag. It lives here, not in `cli/`,
because every torchrun rank parses the flags through `python -m dspark_train` without the Typer app.

No heavy imports here, so `dspark train --help` answers without loading torch.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schemas.recipe import Recipe

from schemas.loading import DEFAULT_RECIPE


def parser(prog: str = "python -m dspark_train") -> argparse.ArgumentParser:
    """Every trainer flag. Defaults for paths are None: inputs are never looked up in the working directory."""
    p = argparse.ArgumentParser(prog=prog, description="Train the DSpark draft (DFlash backbone + Markov head + "
                                "confidence head) over cached hidden-state shards or a live stream.")
    p.add_argument("--recipe", "-r", default=DEFAULT_RECIPE, help="Built-in recipe name or recipe file.")
    p.add_argument("--set", "-s", action="append", default=[], dest="sets", help="Override: key.path=value.")
    p.add_argument("--seed", type=int, default=None, help="Run seed (overrides the recipe's).")
    p.add_argument("--out", "-o", type=Path, default=None,
                   help="Train directory (output; default runs/<recipe>/train under the working directory).")
    p.add_argument("--data", "-d", type=Path, default=None,
                   help="Hidden-state dataset directory (`dspark dump-hidden`); with --stream the regen dataset.")
    p.add_argument("--vocab", type=Path, default=None,
                   help="Draft vocab: the directory `dspark vocab` wrote or its vocab.safetensors (default: the "
                   "vocab beside --data, i.e. DATA/../vocab, when it was built from that data).")
    p.add_argument("--max-steps", type=int, default=None, help="Stop after N optimizer steps.")
    p.add_argument("--resume", action="store_true", help="Continue the checkpoint in --out even if settings changed.")
    p.add_argument("--init-from", type=Path, default=None,
                   help="Start from a speculators-format draft (an export, a DFlash export, a speculators checkpoint).")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available).")
    p.add_argument("--attention", choices=["sdpa", "flex"], default=None, help="Attention kernel (default by device).")
    p.add_argument("--synthetic", type=int, default=None, help="Train on N synthetic samples (smoke tests, bench).")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulated kill
    p.add_argument("--no-progress", action="store_true", help="No progress bar (log lines instead).")
    p.add_argument("--nproc-per-node", type=int, default=1,
                   help="Launch torchrun with this many processes on this node (DDP/FSDP).")
    p.add_argument("--stream", action="store_true", help="Stream states from `dspark serve-target` (--data: regen).")
    p.add_argument("--endpoint", action="append", default=[], help="With --stream: gateway URL (repeatable).")
    p.add_argument("--cache-dir", type=Path, default=None, help="With --stream: tee samples into this store cache.")
    p.add_argument("--token", default=None, help="With --stream: gateway token (prefer $DSPARK_STREAM_TOKEN).")
    p.add_argument("--dry-run", action="store_true",
                   help="Print the per-GPU memory plan (for --nproc-per-node GPUs) on fake tensors; no training.")
    p.add_argument("--gpu-memory", default=None, help="With --dry-run: device memory, e.g. 141GB; prints fit and "
                   "the largest micro-batch and anchor count.")
    p.add_argument("--skip-samples", action="append", default=[], metavar="ID[,ID...]",
                   help="Leave these sample ids out (damaged ones named by `dspark verify`); repeatable.")
    return p


def stream_overrides(
    recipe: Recipe,
    stream: bool,
    endpoints: Sequence[str],
    cache_dir: Path | None,
    *,
    data: Path | None,
    out: Path | None,
    token: str | None = None,
) -> dict[str, Any]:
    """`TrainOptions` fields for `--stream` (none without it): --data is the regen dataset, the token from
    $DSPARK_STREAM_TOKEN, per-rank figures in `<out>/stream/`. Bad combinations raise `StreamError`."""
    from dspark_data.stream.client import StreamError

    if not stream:
        if endpoints or cache_dir is not None:
            raise StreamError("--endpoint and --cache-dir only apply with --stream")
        return {}
    if not endpoints:
        raise StreamError("--stream needs the gateway of `dspark serve-target`: --endpoint http://HOST:PORT")
    if data is None:  # never the working directory's runs/<recipe>/regen: the prompts must be named
        raise StreamError("--stream needs --data: the regen dataset whose prompts the gateways capture")
    from dspark_data.run_layout import stage_dir
    from dspark_data.stream.auth import resolve_token
    from dspark_train.data.stream_options import StreamOptions

    out_dir = out or stage_dir(recipe.name, "train")
    opts = StreamOptions(
        tuple(endpoints), token=resolve_token(token), cache_dir=cache_dir, stats_dir=out_dir / "stream"
    )
    return {"data_dir": data, "stream": opts}
