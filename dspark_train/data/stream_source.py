"""`HiddenSource` over a live target: samples come from `dspark serve-target` gateways instead of shards.

    dspark train --stream --recipe R --endpoint http://127.0.0.1:8200 [--endpoint ...] [--cache-dir DIR]

The source's ids and lengths are the regen dataset's (cheap: its shard index), so the trainer's split,
sampler and anchors (pure functions of seed, epoch, world size and rank, keyed by sample id) give every
rank the same disjoint samples in the same order as an offline run over the dumped data. `get(i)`
sends conversation i (token ids cut at seq_len, as dump-hidden cuts them: `capture.regen_rows`) to a
gateway and decodes the store record it answers. Back-pressure comes from the loader: it calls `get` from
`num_workers` threads for at most `prefetch` batches ahead, and the client caps requests in flight per
rank, so a slow trainer stops asking and a slow server shows up as the loader's data-wait time.

Hybrid mode (`cache_dir`): received records are teed into the shared cache and later uses read them
from there (`stream_peer_cache.py`). An offline run over the cache (`dspark train --data DIR`) therefore
sees the same samples, ids and bytes, and trains to bit-identical weights once the cache holds every
sample of the data set (after the first epoch). `stream_open.open_stream_source` connects and builds one.

This module never imports vLLM: the trainer only speaks HTTP and Arrow.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any

from dspark_data.atomic import atomic_write_bytes
from dspark_data.capture.regen_rows import capture_lengths, capture_row
from dspark_data.capture.settings import CaptureSettings
from dspark_data.store import HiddenSample
from dspark_data.store.hidden import hidden_fingerprint
from dspark_data.stream.client import SampleRejected, StreamClient, StreamError
from dspark_train.data.hidden_source import IndexedSource, SourceInfo
from dspark_train.data.stream_options import StreamOptions
from dspark_train.data.stream_owners import schedule_owners
from dspark_train.data.stream_peer_cache import PeerCache
from dspark_train.data.stream_stats import StreamStats
from schemas.base import fingerprint as fingerprint_of


class StreamSource(IndexedSource):
    """Random access over the regen dataset's conversations, hidden states fetched on demand."""

    def __init__(
        self,
        regen: Any,  # dspark_data.store.ShardDataset of kind "regen"
        client: StreamClient,
        *,
        settings: CaptureSettings,
        opts: StreamOptions,
        rank: int = 0,
        world_size: int = 1,
        writer_kwargs: dict[str, Any],
    ) -> None:
        recipe = settings.recipe
        self.regen, self.client, self.opts = regen, client, opts
        self.rank, self.world_size = rank, world_size
        self.seq_len = recipe.seq_len
        self._codec = str(writer_kwargs["codec"])
        self.stats = StreamStats()
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[HiddenSample]] = {}
        store_fp = hidden_fingerprint(**writer_kwargs)
        self._cache: PeerCache | None = None
        excluded: set[str] = set()
        if opts.cache_dir is not None:
            self._cache = PeerCache(opts.cache_dir, rank=rank, fingerprint=store_fp, writer_kwargs=writer_kwargs,
                                    commit_s=opts.commit_s, peer_wait_s=opts.peer_wait_s, stats=self.stats)
            excluded = self._cache.error_ids()  # rejected once: left out, as dump-hidden leaves them out
        # Samples as dump-hidden would store them: cut at seq_len, empty ones and rejected ones left out.
        lengths = capture_lengths(regen, self.seq_len)
        self._rows = [i for i, sid in enumerate(regen.ids) if lengths[i] > 0 and sid not in excluded]
        self._ids = [regen.ids[i] for i in self._rows]
        self._lengths = [int(lengths[i]) for i in self._rows]
        self.info = SourceInfo(
            layer_ids=settings.layer_ids,
            hidden_size=settings.plan.hidden_size,
            fingerprint="stream-" + fingerprint_of({"store": store_fp, "ids": len(self._ids)}),
            target=recipe.target.model,
            topk_logprobs=int(writer_kwargs.get("topk_logprobs") or 0),
        )
        self._owner = schedule_owners(
            self._ids,
            self._lengths,
            seed=recipe.seed,
            batch_size=recipe.train.batch_size,
            world_size=world_size,
            epochs=recipe.train.epochs,
            val_fraction=recipe.train.val_fraction,
        )
        self.started = time.perf_counter()

    # ------------------------------------------------------------------ HiddenSource

    def get(self, index: int) -> HiddenSample:
        sid = self._ids[index]
        hit = self._cache.get(sid, self._owner[index]) if self._cache is not None else None
        return hit if hit is not None else self._stream(index)

    # ------------------------------------------------------------------ streaming

    def _stream(self, index: int) -> HiddenSample:
        """Fetch once even when several loader threads ask for the same sample at the same time."""
        sid = self._ids[index]
        with self._lock:
            future = self._inflight.get(sid)
            mine = future is None
            if mine:
                future = self._inflight[sid] = Future()
        assert future is not None
        if not mine:
            return future.result()
        try:
            sample = self._fetch(sid, index)
            future.set_result(sample)
            return sample
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._inflight.pop(sid, None)

    def _fetch(self, sid: str, index: int) -> HiddenSample:
        ids, mask = capture_row(self.regen, self._rows[index], self.seq_len)
        t0 = time.perf_counter()
        try:
            record = self.client.fetch(sid, ids, mask)
        except SampleRejected as exc:
            self.stats.reject(sid)
            if self._cache is not None:
                self._cache.record_error(sid, exc.reason, exc.detail)
            raise StreamError(
                f"{exc}. dump-hidden would leave this sample out; the cache records it, so rerun with --resume "
                "and --cache-dir to continue without it (or fix the regen data)"
            ) from None
        got = (record.codec, record.layer_ids, record.hidden_size)
        if got != (self._codec, self.info.layer_ids, self.info.hidden_size):
            raise StreamError(f"sample {sid!r} came back as (codec, layers, hidden) {got}, expected "
                              f"{(self._codec, self.info.layer_ids, self.info.hidden_size)}")
        sample = record.decode()
        if self._cache is not None:
            self._cache.put(record)  # before the in-flight entry goes: a second asker then finds it pending
        self.stats.add(streamed=1, streamed_tokens=int(ids.shape[0]), stream_s=time.perf_counter() - t0,
                       stream_bytes=len(record.batch.column("hidden")[0].as_buffer()))
        return sample

    # ------------------------------------------------------------------ teardown

    def summary(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.started
        s = self.stats.figures()
        s.update(
            rank=self.rank,
            world_size=self.world_size,
            elapsed_s=round(elapsed, 3),
            samples_per_s=round(s["streamed"] / elapsed, 3) if elapsed > 0 else 0.0,
            retries=self.client.stats.retries,
            requests=self.client.stats.requests,
            slot_wait_s=round(self.client.stats.slot_wait_s, 3),
            servers=sorted(self.client.stats.server_ids),
            cache_written=self._cache.written if self._cache is not None else 0,
        )
        return s

    def close(self) -> None:
        """Commit the cache tail, stop the client, write this rank's figures."""
        try:
            if self._cache is not None:
                self._cache.close()
        finally:
            self.client.close()
            summary = self.summary()
            print(
                f"[stream rank {self.rank}] streamed {summary['streamed']} samples ({summary['streamed_tokens']:,} "
                f"tokens, {summary['stream_bytes'] / 1e6:.1f} MB) at {summary['samples_per_s']:.2f} samples/s; "
                f"{summary['cache_hits']} from the cache, {summary['retries']} retries",
                file=sys.stderr, flush=True,
            )
            if self.opts.stats_dir is not None:
                self.opts.stats_dir.mkdir(parents=True, exist_ok=True)
                path = self.opts.stats_dir / f"rank-{self.rank:05d}.json"
                atomic_write_bytes(path, (json.dumps(summary, indent=1) + "\n").encode())
