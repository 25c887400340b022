"""Hidden-state datasets: `HiddenStateWriter` (capture side) and `open_hidden` (trainer side).

A hidden-state dataset is a store dataset of kind "hidden" (see `writer.py`) whose rows are
`id: string`, `input_ids: list<int64>` [T], `loss_mask: list<bool>` [T] and `hidden: large_binary`,
the `[T, L, H]` bfloat16 states encoded by a codec of `codecs.py`. L and H, the layer ids (aux layers
in recipe order, then the last layer id N when stored) and the codec live in the manifest, so a row
does not repeat them. One sample per record batch: a trainer reading in random order touches only
that sample's bytes. Each batch's sha256 (in the shard index) is the per-sample checksum of the
encoded payload.

    with HiddenStateWriter(out, layer_ids=[1, 3, 5, 6], hidden_size=128, codec="zstd-split",
                           target="tiny:trained", seq_len=2048, regen_fingerprint=regen.fingerprint_hash) as w:
        w.write(sample_id, input_ids, loss_mask, hidden)     # hidden: bf16 [T, 4, 128]
    ds = open_hidden(out); s = ds[0]; s.hidden.shape        # (T, 4, 128)

The reader is thread-safe: background decode threads may call `ds[i]` concurrently.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from dspark_data.store import codecs, groupq
from dspark_data.store import topk as topk_codec
from dspark_data.store.manifest import StoreError
from dspark_data.store.reader import ShardDataset, open_dataset
from dspark_data.store.topk import TopK
from dspark_data.store.writer import CloseOnSuccess, ShardWriter
from schemas.recipe import CaptureConfig
from schemas.store import HIDDEN_ARROW_SCHEMA, HIDDEN_TOPK_ARROW_SCHEMA, TOPK_COLUMN, Manifest

KIND_HIDDEN = "hidden"


def hidden_schema(topk_logprobs: int = 0) -> pa.Schema:
    """The row layout (schemas.store): HIDDEN_ARROW_SCHEMA, plus the `topk` payload column when K > 0."""
    return HIDDEN_TOPK_ARROW_SCHEMA if topk_logprobs else HIDDEN_ARROW_SCHEMA


@dataclass(frozen=True)
class HiddenSample:
    """One conversation as the trainer sees it: what every reader yields (this store, the stream cache, the
    live stream, the trainer's synthetic source), so the trainer's data pipeline takes it unchanged."""

    id: str
    input_ids: torch.Tensor  # int64 [T]
    loss_mask: torch.Tensor  # bool [T]: True on tokens the target generated (assistant turns)
    hidden: torch.Tensor | groupq.QuantPlanes  # bf16 [T, L, H]: aux layers in recipe order, then the last layer;
    # QuantPlanes only from `get_deferred` (group codecs, dequantised on the batch's device)
    topk: TopK | None = None  # the target's top-K next-token distribution, when the dataset stores one


def hidden_fingerprint(
    *,
    target: str,
    target_revision: str | None,
    layer_ids: list[int],
    hidden_size: int,
    seq_len: int,
    codec: str,
    zstd_level: int,
    regen_fingerprint: str | None,
    topk_logprobs: int,
    extra_fingerprint: dict[str, Any] | None,
    **_not_content: Any,
) -> dict[str, Any]:
    """The fingerprint a hidden-state dataset records: what decides its content, compared on resume.

    Takes `HiddenStateWriter`'s keyword arguments (those that do not decide the content, such as
    `shard_bytes` or `producer_config`, are ignored), so a producer that needs the fingerprint before it
    opens a writer (the stream cache's `cache.json`, its seed check) gets exactly the writer's."""
    return {
        "target": target,
        "target_revision": target_revision,
        "layer_ids": [int(i) for i in layer_ids],
        "hidden_size": int(hidden_size),
        "seq_len": seq_len,
        "codec": codec,
        "zstd_level": zstd_level if codec != "raw" else None,
        "regen_fingerprint": regen_fingerprint,
        **({"topk_logprobs": int(topk_logprobs)} if topk_logprobs else {}),  # absent: old hashes hold
        **(extra_fingerprint or {}),
    }


class HiddenStateWriter(CloseOnSuccess):
    """Encode and append hidden-state samples; resumable like every store writer (`committed_ids`).

    Why samples are encoded in a pipeline: splitting one sample's encode across cores pays a thread
    hand-off per layer chunk, which for small hidden sizes costs as much as the work, while whole
    samples encoded side by side keep every core busy at any size. `write` hands the sample to one of
    `threads` encoder threads and returns; rows are appended strictly in `write` order, and `commit` /
    `close` wait for the samples still encoding. Do not modify a tensor passed to `write` afterwards.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        layer_ids: list[int],
        hidden_size: int,
        codec: str,
        target: str,
        seq_len: int,
        target_revision: str | None = None,
        regen_fingerprint: str | None = None,
        zstd_level: int = CaptureConfig.default_of("zstd_level"),
        extra_fingerprint: dict[str, Any] | None = None,
        producer_config: dict[str, Any] | None = None,
        shard_bytes: int = 1 << 30,
        overwrite: bool = False,
        threads: int | None = None,
        topk_logprobs: int = 0,
    ):
        codecs.get_codec(codec)  # unknown codec: error before touching the directory
        self.layer_ids, self.hidden_size, self.codec = list(layer_ids), int(hidden_size), codec
        self.level = zstd_level
        self.topk_logprobs = int(topk_logprobs)
        self.schema = hidden_schema(self.topk_logprobs)
        self.threads = codecs.default_threads() if threads is None else max(1, threads)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="dspark-encode") if self.threads > 1 else None
        self._inflight: deque[tuple[str, np.ndarray, np.ndarray, int, Future[list[bytes]]]] = deque()
        fingerprint = hidden_fingerprint(
            target=target,
            target_revision=target_revision,
            layer_ids=self.layer_ids,
            hidden_size=self.hidden_size,
            seq_len=seq_len,
            codec=codec,
            zstd_level=zstd_level,
            regen_fingerprint=regen_fingerprint,
            topk_logprobs=self.topk_logprobs,
            extra_fingerprint=extra_fingerprint,
        )
        self.store = ShardWriter(
            directory,
            KIND_HIDDEN,
            self.schema,
            fingerprint,
            producer_config=producer_config,
            shard_bytes=shard_bytes,
            length_column="input_ids",
            codec=codec,
            layer_ids=self.layer_ids,
            hidden_size=self.hidden_size,
            topk_logprobs=self.topk_logprobs or None,
            overwrite=overwrite,
        )

    @property
    def committed_ids(self) -> set[str]:
        return self.store.committed_ids

    @property
    def error_ids(self) -> set[str]:
        return self.store.error_ids

    @property
    def complete(self) -> bool:
        return self.store.complete

    def write(
        self,
        sample_id: str,
        input_ids: torch.Tensor,
        loss_mask: torch.Tensor,
        hidden: torch.Tensor,
        topk: TopK | None = None,
    ) -> None:
        """Queue one sample for encoding; it is appended (in call order) once encoded. `topk`: required
        exactly when the dataset stores top-K log-probs (`topk_logprobs` > 0), [T, K] with that K."""
        t = int(input_ids.shape[0])
        expected = (t, len(self.layer_ids), self.hidden_size)
        if input_ids.dim() != 1 or tuple(loss_mask.shape) != (t,) or tuple(hidden.shape) != expected:
            raise StoreError(
                f"sample {sample_id!r}: input_ids {tuple(input_ids.shape)}, loss_mask {tuple(loss_mask.shape)}, "
                f"hidden {tuple(hidden.shape)}; expected [T], [T], {list(expected)} (T={t})"
            )
        if hidden.dtype != torch.bfloat16:
            raise StoreError(f"sample {sample_id!r}: hidden states must be bfloat16, got {hidden.dtype}")
        check_topk(sample_id, topk, t, self.topk_logprobs)
        ids = input_ids.detach().to("cpu", torch.int64).numpy()
        mask = loss_mask.detach().to("cpu", torch.bool).numpy()
        future: Future[list[bytes]] = Future()
        if self._pool is None:
            future.set_result(encode_payloads(self.codec, hidden, topk, self.level))
        else:
            future = self._pool.submit(encode_payloads, self.codec, hidden, topk, self.level)
        raw = hidden.numel() * 2 + t * topk_codec.raw_bytes_per_token(self.topk_logprobs)
        self._inflight.append((sample_id, ids, mask, raw, future))
        self._drain(keep=2 * self.threads)  # bounded: at most 2 samples per encoder thread in memory

    def _drain(self, keep: int = 0) -> None:
        """Append encoded samples in write order until at most `keep` are still in flight."""
        while len(self._inflight) > keep:
            sample_id, ids, mask, raw_bytes, future = self._inflight.popleft()
            try:
                payloads = future.result()
            except ValueError as exc:
                raise StoreError(f"sample {sample_id!r}: cannot encode its hidden states ({exc})") from None
            self.store.write_batch(hidden_row(sample_id, ids, mask, payloads), raw_bytes=[raw_bytes])

    def record_error(self, sample_id: str, reason: str, detail: str = "") -> None:
        self.store.record_error(sample_id, reason, detail)

    def commit(self) -> None:
        self._drain()
        self.store.commit()

    def close(self) -> Manifest:
        try:
            self._drain()
            return self.store.close()
        finally:
            self._shutdown()

    def abort(self) -> None:
        """Drop what is not committed, samples still encoding included."""
        for *_, future in self._inflight:
            future.cancel()
        self._inflight.clear()
        self._shutdown()
        self.store.abort()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class HiddenDataset:
    """Random access to decoded hidden-state samples: `ds[i] -> HiddenSample`. Thread-safe."""

    def __init__(self, store: ShardDataset, *, threads: int | None = 1):
        m = store.manifest
        if m.kind != KIND_HIDDEN or m.codec is None or not m.layer_ids or not m.hidden_size:
            raise StoreError(f"{store.directory}: not a hidden-state dataset (kind {m.kind!r}, codec {m.codec!r})")
        codecs.get_codec(m.codec)
        self.store, self.threads = store, threads
        self.manifest: Manifest = m
        self.layer_ids: list[int] = list(m.layer_ids)
        self.hidden_size: int = int(m.hidden_size)
        self.codec: str = m.codec
        self.topk_logprobs: int = int(m.topk_logprobs or 0)

    @property
    def ids(self) -> list[str]:
        return self.store.ids

    @property
    def lengths(self) -> np.ndarray:
        return self.store.lengths

    def __len__(self) -> int:
        return len(self.store)

    def index_of(self, sample_id: str) -> int:
        return self.store.index_of(sample_id)

    def tokens(self, i: int) -> tuple[str, torch.Tensor, torch.Tensor]:
        """(id, input_ids, loss_mask) of sample i without decoding its hidden states (vocab counting)."""
        batch, r = self.store.record(i)
        return batch.column("id")[r].as_py(), _list_tensor(batch, "input_ids", r), _list_tensor(batch, "loss_mask", r)

    def __getitem__(self, i: int) -> HiddenSample:
        return self._read(i, deferred=False)

    def get(self, i: int) -> HiddenSample:
        return self[i]

    def get_deferred(self, i: int) -> HiddenSample:
        """Sample i with only the CPU half of decoding done (`codecs.decode_deferred`): `hidden` is
        `QuantPlanes` for a group-quantised codec (the trainer dequantises them on its device, `Batch.to`),
        the bf16 tensor for the others."""
        return self._read(i, deferred=True)

    def _read(self, i: int, *, deferred: bool) -> HiddenSample:
        batch, r = self.store.record(i)
        sid = batch.column("id")[r].as_py()
        input_ids = _list_tensor(batch, "input_ids", r)
        loss_mask = _list_tensor(batch, "loss_mask", r)
        payload = _binary_view(batch.column("hidden"), r)
        shape = (int(input_ids.shape[0]), len(self.layer_ids), self.hidden_size)
        try:
            decode = codecs.decode_deferred if deferred else codecs.decode
            hidden = decode(self.codec, payload, shape, threads=self.threads)
        except ValueError as exc:
            shard = self.store.manifest.shards[self.store.shard_of(i)].file
            raise StoreError(f"{self.store.directory}/{shard}: sample {sid!r} (row {i}): {exc}") from None
        topk = None
        if self.topk_logprobs:
            try:
                topk = topk_codec.decode(_binary_view(batch.column(TOPK_COLUMN), r), shape[0], self.topk_logprobs)
            except ValueError as exc:
                shard = self.store.manifest.shards[self.store.shard_of(i)].file
                raise StoreError(f"{self.store.directory}/{shard}: sample {sid!r} (row {i}): {exc}") from None
        return HiddenSample(sid, input_ids, loss_mask, hidden, topk)


def check_topk(sample_id: str, topk: TopK | None, tokens: int, k: int) -> None:
    """A sample's top-K must be present exactly when the dataset stores one, and [T, K] with its K."""
    if (topk is None) != (k == 0):
        want = f"a top-{k} distribution" if k else "no top-K distribution (capture.topk_logprobs is 0)"
        raise StoreError(f"sample {sample_id!r}: this dataset stores {want}, got {'none' if topk is None else 'one'}")
    if topk is not None and (tuple(topk.ids.shape) != (tokens, k) or tuple(topk.logprobs.shape) != (tokens, k)
                             or tuple(topk.tail.shape) != (tokens,)):
        raise StoreError(f"sample {sample_id!r}: top-K ids {tuple(topk.ids.shape)}, logprobs "
                         f"{tuple(topk.logprobs.shape)}, tail {tuple(topk.tail.shape)}; expected [{tokens}, {k}]")


def encode_payloads(codec: str, hidden: torch.Tensor, topk: TopK | None, level: int) -> list[bytes]:
    """The binary columns of one row: the hidden-state payload, then the top-K payload when present."""
    out = [codecs.encode(codec, hidden, level=level, threads=1)]
    if topk is not None:
        out.append(topk_codec.encode(topk, level=level))
    return out


def hidden_row(sample_id: str, ids: np.ndarray, mask: np.ndarray, payloads: list[bytes]) -> pa.RecordBatch:
    """The one-row record batch of a sample (the store's row, and the streamed record's)."""
    offsets = pa.array([0, len(ids)], pa.int32())
    return pa.record_batch(
        [
            pa.array([sample_id], pa.string()),
            pa.ListArray.from_arrays(offsets, pa.array(np.asarray(ids, dtype=np.int64), pa.int64())),
            pa.ListArray.from_arrays(offsets, pa.array(np.asarray(mask, dtype=bool), pa.bool_())),
            *(_one_binary(p) for p in payloads),
        ],
        schema=hidden_schema(len(payloads) - 1),
    )


def _binary_view(col: pa.Array, r: int) -> memoryview:
    """Row r of a large_binary column, zero-copy (from the memory map when the shard is mapped)."""
    offsets = np.frombuffer(col.buffers()[1], dtype=np.int64, count=len(col) + 1, offset=col.offset * 8)
    return memoryview(col.buffers()[2])[offsets[r] : offsets[r + 1]]


def _one_binary(payload: bytes) -> pa.Array:
    """A one-row large_binary array over `payload` without copying it (`pa.array` would copy)."""
    offsets = pa.py_buffer(np.array([0, len(payload)], dtype=np.int64).tobytes())
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(payload)])


def _list_tensor(batch: pa.RecordBatch, name: str, r: int) -> torch.Tensor:
    values = batch.column(name)[r].values
    if pa.types.is_boolean(values.type):
        return torch.from_numpy(values.to_numpy(zero_copy_only=False).astype(bool, copy=False))
    return torch.from_numpy(values.to_numpy().copy())


def open_hidden(directory: str | Path, *, require_complete: bool = False, threads: int | None = 1) -> HiddenDataset:
    """Open a hidden-state dataset; `threads` splits one sample's decode across cores (default 1:
    callers decode several samples in parallel)."""
    return HiddenDataset(open_dataset(directory, require_complete=require_complete), threads=threads)
