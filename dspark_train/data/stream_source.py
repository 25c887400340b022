"""`HiddenSource` over a live target: samples come from `dspark serve-target` gateways instead of shards.

    dspark train --stream --recipe R --endpoint http://127.0.0.1:8200 [--endpoint ...] [--cache-dir DIR]

The source's ids and lengths are the regen dataset's (cheap: its shard index), so the trainer's split,
sampler and anchors (pure functions of seed, epoch, world size and rank, keyed by sample id) give every
rank the same disjoint samples in the same order as an offline run over the dumped data. `get(i)`
sends conversation i (token ids cut at seq_len, as dump-hidden cuts them) to a gateway and decodes the
store record it answers. Back-pressure comes from the loader: it calls `get` from `num_workers`
threads for at most `prefetch` batches ahead, and the client caps requests in flight per rank, so a
slow trainer stops asking and a slow server shows up as the loader's data-wait time.

Hybrid mode (`cache_dir`): each received record is appended unchanged to this rank's part of the cache
(`dspark_data.stream.cache`), and every later use of a sample, by any rank, reads it from the cache.
Each sample is streamed once in the whole run, by the rank that uses it first (`schedule_owners`, from
the same pure sampler); another rank that needs it later waits for that rank's commit instead of
streaming a second copy, so the cache holds exactly the bytes every rank trained on. An offline run
over the cache (`dspark train --data DIR`) therefore sees the same samples, ids and bytes, and trains to
bit-identical weights once the cache holds every sample of the data set (after the first epoch).

This module never imports vLLM: the trainer only speaks HTTP and Arrow.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dspark_data.atomic import atomic_write_bytes
from dspark_data.store import HiddenSample as StoreSample
from dspark_data.stream.cache import (
    CacheWriter,
    PartsView,
    init_cache,
    open_seed,
    part_dir,
    store_fingerprint,
    write_wanted,
)
from dspark_data.stream.client import RetryPolicy, SampleRejected, StreamClient, StreamError
from dspark_train.data.hidden_source import HiddenSample, IndexedSource, SourceInfo
from dspark_train.data.sampler import epoch_batches, eval_batches
from dspark_train.data.split import split_indices
from schemas.base import fingerprint as fingerprint_of
from schemas.recipe import Recipe


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


@dataclass
class StreamStats:
    streamed: int = 0
    streamed_tokens: int = 0
    stream_bytes: int = 0
    stream_s: float = 0.0  # summed over threads: wall time requests were out
    cache_hits: int = 0
    peer_waits: int = 0
    peer_wait_s: float = 0.0
    self_streamed_peer: int = 0  # a peer's sample streamed here after peer_wait_s (should stay 0)
    rejected: list[str] = field(default_factory=list)


def schedule_owners(
    ids: Sequence[str],
    lengths: Sequence[int],
    *,
    seed: int,
    batch_size: int,
    world_size: int,
    epochs: int,
    val_fraction: float,
) -> list[int]:
    """For every sample, the rank that uses it first in the run (the one that streams it in hybrid mode).

    Validation samples: their rank in the step-0 validation pass. Training samples: the rank whose batch
    holds them in the first epoch that schedules them (the loader's own `epoch_batches`). Samples no
    epoch schedules: index modulo world size.
    """
    train, val = split_indices(ids, val_fraction)
    owner = [-1] * len(ids)
    for r in range(world_size):
        for batch in eval_batches(val, lengths, batch_size=batch_size, world_size=world_size, rank=r):
            for i in batch:
                owner[i] = r
    for epoch in range(epochs):
        # One global order per epoch; rank r takes items r, r + W, ... of each global batch (sampler.py step 4).
        global_batches = epoch_batches(train, ids, lengths, seed=seed, epoch=epoch, batch_size=batch_size * world_size)
        for g in global_batches:
            for r in range(world_size):
                for i in g[r::world_size]:
                    if owner[i] < 0:
                        owner[i] = r
    return [o if o >= 0 else i % world_size for i, o in enumerate(owner)]


class StreamSource(IndexedSource):
    """Random access over the regen dataset's conversations, hidden states fetched on demand."""

    def __init__(
        self,
        regen: Any,  # dspark_data.store.ShardDataset of kind "regen"
        client: StreamClient,
        *,
        recipe: Recipe,
        layer_ids: list[int],
        hidden_size: int,
        opts: StreamOptions,
        rank: int = 0,
        world_size: int = 1,
        writer_kwargs: dict[str, Any],
    ) -> None:
        self.regen, self.client, self.opts = regen, client, opts
        self.rank, self.world_size = rank, world_size
        self.seq_len = recipe.seq_len
        self._codec = str(writer_kwargs["codec"])
        self.stats = StreamStats()
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[StoreSample]] = {}
        self._wanted: set[str] = set()
        self._view: PartsView | None = None
        self._writer: CacheWriter | None = None
        excluded: set[str] = set()
        if opts.cache_dir is not None:
            # A dump-hidden parts parent as --cache-dir seeds the cache (read-only; checked before anything is written).
            seed = open_seed(opts.cache_dir, store_fingerprint(writer_kwargs))
            init_cache(opts.cache_dir, writer_kwargs)
            self._writer = CacheWriter(part_dir(opts.cache_dir, rank), writer_kwargs, commit_s=opts.commit_s)
            self._view = PartsView(opts.cache_dir, seed)
            excluded = self._view.error_ids()  # rejected once: left out, as dump-hidden leaves them out
        # Samples as dump-hidden would store them: cut at seq_len, empty ones and rejected ones left out.
        lengths = np.minimum(np.asarray(regen.lengths, dtype=np.int64), self.seq_len)
        self._rows = [i for i, sid in enumerate(regen.ids) if lengths[i] > 0 and sid not in excluded]
        self._ids = [regen.ids[i] for i in self._rows]
        self._lengths = [int(lengths[i]) for i in self._rows]
        self.info = SourceInfo(
            layer_ids=list(layer_ids),
            hidden_size=int(hidden_size),
            fingerprint="stream-" + fingerprint_of({"store": store_fingerprint(writer_kwargs), "ids": len(self._ids)}),
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
        s = self._from_cache(sid, index)
        if s is None:
            s = self._stream(index)
        return HiddenSample(id=s.id, input_ids=s.input_ids, loss_mask=s.loss_mask, hidden=s.hidden, topk=s.topk)

    # ------------------------------------------------------------------ cache

    def _cached(self, sid: str) -> StoreSample | None:
        assert self._writer is not None and self._view is not None
        record = self._writer.pending(sid)
        if record is not None:
            return record.decode()
        hit = self._view.get(sid)
        if hit is None and self._writer.has(sid):  # committed by this rank since the view's last refresh
            self._view.refresh(force=True)
            hit = self._view.get(sid)
        return hit

    def _from_cache(self, sid: str, index: int) -> StoreSample | None:
        if self._view is None:
            return None
        hit = self._cached(sid)
        if hit is None and self._owner[index] != self.rank:
            hit = self._wait_for_peer(sid, index)
        if hit is not None:
            with self._lock:
                self.stats.cache_hits += 1
        return hit

    def _wait_for_peer(self, sid: str, index: int) -> StoreSample | None:
        """The owner rank streams this sample (or already has); wait for its commit rather than stream a copy."""
        assert self._view is not None
        start = time.monotonic()
        self._want(sid, True)
        try:
            while time.monotonic() - start < self.opts.peer_wait_s:
                self._view.refresh()
                hit = self._cached(sid)
                if hit is not None:
                    with self._lock:
                        self.stats.peer_waits += 1
                        self.stats.peer_wait_s += time.monotonic() - start
                    return hit
                time.sleep(0.05)
        finally:
            self._want(sid, False)
        with self._lock:
            self.stats.self_streamed_peer += 1
        _log(f"[stream rank {self.rank}] sample {sid!r} (rank {self._owner[index]}'s) not in the cache after "
             f"{self.opts.peer_wait_s:.0f}s; streaming it here (its commit was lost, e.g. by a trainer restart)")
        return None

    def _want(self, sid: str, waiting: bool) -> None:
        """Publish the samples this rank waits for, so their owner commits them now (not at commit_s)."""
        assert self.opts.cache_dir is not None
        with self._lock:
            (self._wanted.add if waiting else self._wanted.discard)(sid)
            write_wanted(self.opts.cache_dir, self.rank, set(self._wanted))

    # ------------------------------------------------------------------ streaming

    def _tokens(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        batch, r = self.regen.record(self._rows[index])
        ids = batch.column("input_ids")[r].values.to_numpy()[: self.seq_len].astype(np.int64)
        mask = batch.column("loss_mask")[r].values.to_numpy(zero_copy_only=False)[: self.seq_len].astype(bool)
        return ids, mask

    def _stream(self, index: int) -> StoreSample:
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

    def _fetch(self, sid: str, index: int) -> StoreSample:
        ids, mask = self._tokens(index)
        t0 = time.perf_counter()
        try:
            record = self.client.fetch(sid, ids, mask)
        except SampleRejected as exc:
            with self._lock:
                self.stats.rejected.append(sid)
            if self._writer is not None:
                self._writer.record_error(sid, exc.reason, exc.detail)
            raise StreamError(
                f"{exc}. dump-hidden would leave this sample out; the cache records it, so rerun with --resume "
                "and --cache-dir to continue without it (or fix the regen data)"
            ) from None
        got = (record.codec, record.layer_ids, record.hidden_size)
        if got != (self._codec, self.info.layer_ids, self.info.hidden_size):
            raise StreamError(f"sample {sid!r} came back as (codec, layers, hidden) {got}, expected "
                              f"{(self._codec, self.info.layer_ids, self.info.hidden_size)}")
        sample = record.decode()
        if self._writer is not None:
            self._writer.put(record)  # before the in-flight entry goes: a second asker then finds it pending
        with self._lock:
            self.stats.streamed += 1
            self.stats.streamed_tokens += int(ids.shape[0])
            self.stats.stream_bytes += len(record.batch.column("hidden")[0].as_buffer())
            self.stats.stream_s += time.perf_counter() - t0
        return sample

    # ------------------------------------------------------------------ teardown

    def summary(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.started
        s = asdict(self.stats)
        s.update(
            rank=self.rank,
            world_size=self.world_size,
            elapsed_s=round(elapsed, 3),
            samples_per_s=round(self.stats.streamed / elapsed, 3) if elapsed > 0 else 0.0,
            retries=self.client.stats.retries,
            requests=self.client.stats.requests,
            slot_wait_s=round(self.client.stats.slot_wait_s, 3),
            servers=sorted(self.client.stats.server_ids),
            cache_written=self._writer.written if self._writer is not None else 0,
        )
        return s

    def close(self) -> None:
        """Commit the cache tail, stop the client, write this rank's figures."""
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            self.client.close()
            summary = self.summary()
            _log(
                f"[stream rank {self.rank}] streamed {summary['streamed']} samples ({summary['streamed_tokens']:,} "
                f"tokens, {summary['stream_bytes'] / 1e6:.1f} MB) at {summary['samples_per_s']:.2f} samples/s; "
                f"{summary['cache_hits']} from the cache, {summary['retries']} retries"
            )
            if self.opts.stats_dir is not None:
                self.opts.stats_dir.mkdir(parents=True, exist_ok=True)
                path = self.opts.stats_dir / f"rank-{self.rank:05d}.json"
                atomic_write_bytes(path, (json.dumps(summary, indent=1) + "\n").encode())


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def expected_capture(recipe: Recipe, num_hidden_layers: int, hidden_size: int) -> dict[str, Any]:
    """What a server must capture for this recipe (compared with its /v1/info)."""
    capture = recipe.capture
    layer_ids = [*capture.aux_layers, *([num_hidden_layers] if capture.include_last_layer else [])]
    return {
        "target": recipe.target.model,
        "target_revision": recipe.target.revision,
        "seq_len": recipe.seq_len,
        "layer_ids": layer_ids,
        "hidden_size": hidden_size,
        "codec": capture.codec,
        "zstd_level": capture.zstd_level,
        "topk_logprobs": capture.topk_logprobs,
    }


def open_stream_source(
    recipe: Recipe,
    opts: StreamOptions,
    *,
    data_dir: Path,
    num_hidden_layers: int,
    hidden_size: int,
    rank: int = 0,
    world_size: int = 1,
) -> StreamSource:
    """Connect to the gateways (waiting for one to answer), check them against the recipe, open the cache."""
    from dspark_data.store.parts import is_parts_parent, open_any

    if not (Path(data_dir) / "manifest.json").is_file() and not is_parts_parent(data_dir):
        raise FileNotFoundError(
            f"regen data {data_dir} not found: --stream sends the regen dataset's conversations to the server; "
            "run `dspark regen` first or pass --data DIR"
        )
    # One regen dataset, or a parent of `regen --num-shards N` parts read as one (merge-checked, id-hash order,
    # as the offline path reads them); the trainer's batches are keyed by id, so the order does not matter.
    regen = open_any(data_dir, require_complete=True)
    expect = expected_capture(recipe, num_hidden_layers, hidden_size)
    client = StreamClient(
        list(opts.endpoints),
        opts.token,
        expect=expect,
        max_inflight=opts.max_inflight or max(1, recipe.train.num_workers),
        timeout_s=opts.timeout_s,
        retry=RetryPolicy(deadline_s=opts.deadline_s),
    )
    client.connect()
    writer_kwargs = stream_writer_kwargs(recipe, expect, regen.manifest.fingerprint_hash, opts.endpoints)
    return StreamSource(
        regen,
        client,
        recipe=recipe,
        layer_ids=expect["layer_ids"],
        hidden_size=hidden_size,
        opts=opts,
        rank=rank,
        world_size=world_size,
        writer_kwargs=writer_kwargs,
    )


def stream_writer_kwargs(
    recipe: Recipe, expect: dict[str, Any], regen_fingerprint: str, endpoints: Sequence[str]
) -> dict[str, Any]:
    """dump-hidden's `HiddenStateWriter` arguments (capture/dump.py), so a cache part is a dump's twin, and a
    `dump-hidden --backend vllm` output of the same regen data has the stream's fingerprint (it can seed the cache)."""
    return {
        "layer_ids": expect["layer_ids"],
        "hidden_size": expect["hidden_size"],
        "codec": recipe.capture.codec,
        "target": recipe.target.model,
        "target_revision": recipe.target.revision,
        "seq_len": recipe.seq_len,
        "regen_fingerprint": regen_fingerprint,
        "zstd_level": recipe.capture.zstd_level,
        "extra_fingerprint": {"backend": "vllm", "engine_dtype": recipe.target.dtype},
        "producer_config": {"stream": {"endpoints": list(endpoints)}, "capture": recipe.capture.model_dump()},
        "shard_bytes": recipe.capture.shard_bytes,
        "topk_logprobs": recipe.capture.topk_logprobs,
    }

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
    $DSPARK_STREAM_TOKEN, per-rank figures in `<out>/stream/`."""
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

    out_dir = out or stage_dir(recipe.name, "train")
    opts = StreamOptions(
        tuple(endpoints), token=resolve_token(token), cache_dir=cache_dir, stats_dir=out_dir / "stream"
    )
    return {"data_dir": data, "stream": opts}
