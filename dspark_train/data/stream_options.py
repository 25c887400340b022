"""How `dspark train --stream` streams: the run-time choices that are not part of the recipe.

Kept apart from the source so the flag handling (`dspark_train/flags.py`) and `TrainOptions` can name
them without importing the streaming machinery.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StreamOptions:
    """Where to stream from and how (run-time choices, not part of the recipe)."""

    endpoints: tuple[str, ...]
    token: str | None = None  # shared token (DSPARK_STREAM_TOKEN) for non-loopback servers
    cache_dir: Path | None = None  # hybrid mode: tee every sample into this store cache
    max_inflight: int | None = None  # requests out per rank (None: train.num_workers, at least 1)
    timeout_s: float = 900.0  # one request, including the server's queue
    deadline_s: float = 3600.0  # one sample, across retries and server restarts
    commit_s: float = 2.0  # cache commit interval (a peer waits at most about this long for a sample)
    peer_wait_s: float = 300.0  # then a rank streams a peer's sample itself (only after a lost commit)
    stats_dir: Path | None = None  # write rank-NNNNN.json with the streaming figures at close
