"""The hybrid-mode cache as one trainer rank uses it: read any rank's samples, write this rank's part.

`dspark train --stream --cache-dir DIR` tees each received record unchanged into this rank's part of the
cache (`dspark_data.stream.replay_cache`), and every later use of a sample, by any rank, reads it from
there. Each sample is streamed once in the whole run, by the rank that uses it first (its owner,
`stream_owners.schedule_owners`); another rank that needs it waits for the owner's commit instead of
streaming a second copy, so the cache holds exactly the bytes every rank trained on. A dump-hidden parts
parent given as the cache directory seeds it (read-only, checked against the stream's fingerprint first).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

from dspark_data.store import HiddenSample
from dspark_data.stream.record import StreamedRecord
from dspark_data.stream.replay_cache import CacheWriter, PartsView, init_cache, open_seed, part_dir, write_wanted
from dspark_train.data.stream_stats import StreamStats


class PeerCache:
    """This rank's view of the shared cache: committed samples of every part, this rank's pending ones."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        rank: int,
        fingerprint: dict[str, Any],
        writer_kwargs: dict[str, Any],
        commit_s: float,
        peer_wait_s: float,
        stats: StreamStats,
    ) -> None:
        self.cache_dir, self.rank, self.peer_wait_s, self.stats = Path(cache_dir), rank, peer_wait_s, stats
        # A dump-hidden parts parent as --cache-dir seeds the cache (read-only; checked before anything is written).
        seed = open_seed(self.cache_dir, fingerprint)
        init_cache(self.cache_dir, fingerprint)
        self.writer = CacheWriter(part_dir(self.cache_dir, rank), writer_kwargs, commit_s=commit_s)
        self.view = PartsView(self.cache_dir, seed)
        self._lock = threading.Lock()
        self._wanted: set[str] = set()

    def error_ids(self) -> set[str]:
        """Samples rejected once (by any rank's server or the seed's capture): left out, as dump-hidden does."""
        return self.view.error_ids()

    def get(self, sid: str, owner: int) -> HiddenSample | None:
        """The sample from the cache, waiting for its owner rank's commit when it is another rank's; None:
        this rank streams it (it owns it, or the owner's commit did not come within `peer_wait_s`)."""
        hit = self._cached(sid)
        if hit is None and owner != self.rank:
            hit = self._wait_for_peer(sid, owner)
        if hit is not None:
            self.stats.add(cache_hits=1)
        return hit

    def put(self, record: StreamedRecord) -> None:
        self.writer.put(record)

    def record_error(self, sid: str, reason: str, detail: str) -> None:
        self.writer.record_error(sid, reason, detail)

    @property
    def written(self) -> int:
        return self.writer.written

    def close(self) -> None:
        """Commit this rank's tail and mark its part complete."""
        self.writer.close()

    def _cached(self, sid: str) -> HiddenSample | None:
        record = self.writer.pending(sid)
        if record is not None:
            return record.decode()
        hit = self.view.get(sid)
        if hit is None and self.writer.has(sid):  # committed by this rank since the view's last refresh
            self.view.refresh(force=True)
            hit = self.view.get(sid)
        return hit

    def _wait_for_peer(self, sid: str, owner: int) -> HiddenSample | None:
        """The owner rank streams this sample (or already has); wait for its commit rather than stream a copy."""
        start = time.monotonic()
        self._want(sid, True)
        try:
            while time.monotonic() - start < self.peer_wait_s:
                self.view.refresh()
                hit = self._cached(sid)
                if hit is not None:
                    self.stats.add(peer_waits=1, peer_wait_s=time.monotonic() - start)
                    return hit
                time.sleep(0.05)
        finally:
            self._want(sid, False)
        self.stats.add(self_streamed_peer=1)
        print(f"[stream rank {self.rank}] sample {sid!r} (rank {owner}'s) not in the cache after "
              f"{self.peer_wait_s:.0f}s; streaming it here (its commit was lost, e.g. by a trainer restart)",
              file=sys.stderr, flush=True)
        return None

    def _want(self, sid: str, waiting: bool) -> None:
        """Publish the samples this rank waits for, so their owner commits them now (not at commit_s)."""
        with self._lock:
            (self._wanted.add if waiting else self._wanted.discard)(sid)
            write_wanted(self.cache_dir, self.rank, set(self._wanted))
