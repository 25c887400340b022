"""`dspark inspect` and `dspark verify`: describe and check a dataset directory (issue #4)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import not_built


def inspect(directory: Annotated[Path, typer.Argument(help="A regen or hidden-state dataset directory.")]) -> None:
    """Samples, tokens, bytes/token, compression ratio, codec, layers, fingerprint, shards."""
    not_built("inspect", 4)


def verify(directory: Annotated[Path, typer.Argument(help="A regen or hidden-state dataset directory.")]) -> None:
    """Recompute every checksum; report the shard and sample of any mismatch; exit non-zero on failure."""
    not_built("verify", 4)
