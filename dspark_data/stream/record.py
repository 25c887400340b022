"""One streamed sample on the wire: the store's hidden-state record, as a one-row Arrow IPC stream.

Why the store's record and not a format of our own: a streamed sample must train exactly like the
sample `dump-hidden` would have stored, and the trainer's `--cache-dir` tees it into a store dataset.
Sending the store's row (id, input_ids, loss_mask, codec payload) means the cache appends the received
bytes unchanged (no re-encoding: an offline run over the cache decodes the very payload the streamed
run decoded), and the codec (zstd-split, fp8) shrinks the transfer exactly as it shrinks the disk.
The codec, layer ids, hidden size and top-K size travel as schema metadata, since a lone row has no
manifest. With `capture.topk_logprobs` K > 0 the row carries the store's `topk` column as well
(`dspark_data.store.topk`), built by the same function as the store's, so it is the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from dspark_data.store import HiddenSample, codecs
from dspark_data.store import topk as topk_codec
from dspark_data.store.hidden import encode_payloads, hidden_row, hidden_schema
from dspark_data.store.topk import TopK
from schemas.recipe import CaptureConfig
from schemas.store import TOPK_COLUMN
from schemas.stream import META_CODEC, META_FORMAT, META_HIDDEN_SIZE, META_LAYER_IDS, META_TOPK, STREAM_FORMAT


class RecordError(ValueError):
    """A reply that is not a well-formed streamed sample, or not the sample that was asked for."""


def encode_sample(
    sample_id: str,
    input_ids: Sequence[int] | np.ndarray,
    loss_mask: Sequence[bool] | np.ndarray,
    hidden: torch.Tensor,
    *,
    codec: str,
    layer_ids: Sequence[int],
    zstd_level: int = CaptureConfig.default_of("zstd_level"),
    topk: TopK | None = None,
) -> bytes:
    """bf16 states [T, L, H] (and the top-K, when the server stores one) -> the wire bytes (the store's row)."""
    payloads = encode_payloads(codec, hidden, topk, zstd_level)
    batch = hidden_row(sample_id, np.asarray(input_ids), np.asarray(loss_mask), payloads)
    metadata = {
        META_FORMAT: STREAM_FORMAT,
        META_CODEC: codec,
        META_LAYER_IDS: json.dumps([int(i) for i in layer_ids]),
        META_HIDDEN_SIZE: str(int(hidden.shape[-1])),
        META_TOPK: str(topk.k if topk is not None else 0),
    }
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema.with_metadata(metadata)) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


@dataclass(frozen=True)
class StreamedRecord:
    """A received sample still encoded: the row to tee into the store, and how to decode it."""

    batch: pa.RecordBatch  # one row, hidden_schema(topk_logprobs) (metadata dropped)
    codec: str
    layer_ids: list[int]
    hidden_size: int
    topk_logprobs: int = 0

    @property
    def sample_id(self) -> str:
        return str(self.batch.column("id")[0].as_py())

    @property
    def num_tokens(self) -> int:
        return int(self.batch.column("input_ids").value_lengths()[0].as_py())

    @property
    def raw_bytes(self) -> int:
        """Uncompressed size (the store's `raw_bytes` accounting): bf16 states plus the raw top-K."""
        per_token = len(self.layer_ids) * self.hidden_size * 2 + topk_codec.raw_bytes_per_token(self.topk_logprobs)
        return self.num_tokens * per_token

    def decode(self) -> HiddenSample:
        """The sample as the trainer sees it (decoded exactly as the store's reader decodes it)."""
        ids = torch.from_numpy(self.batch.column("input_ids")[0].values.to_numpy().copy())
        mask_values = self.batch.column("loss_mask")[0].values.to_numpy(zero_copy_only=False)
        mask = torch.from_numpy(mask_values.astype(bool, copy=True))
        payload = self.batch.column("hidden")[0].as_buffer()
        shape = (int(ids.shape[0]), len(self.layer_ids), self.hidden_size)
        hidden = codecs.decode(self.codec, memoryview(payload), shape)
        topk = None
        if self.topk_logprobs:
            topk_payload = memoryview(self.batch.column(TOPK_COLUMN)[0].as_buffer())
            topk = topk_codec.decode(topk_payload, shape[0], self.topk_logprobs)
        return HiddenSample(self.sample_id, ids, mask, hidden, topk)


def decode_record(data: bytes) -> StreamedRecord:
    """Parse the wire bytes; RecordError when they are not exactly one streamed sample."""
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(data))
        batches = list(reader)
    except pa.ArrowException as exc:
        raise RecordError(f"reply is not an Arrow IPC stream ({exc})") from None
    meta = {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items()}
    if meta.get(META_FORMAT) != STREAM_FORMAT:
        raise RecordError(f"reply format {meta.get(META_FORMAT)!r}, expected {STREAM_FORMAT!r}")
    k = int(meta.get(META_TOPK, "0"))
    schema = hidden_schema(k)
    if not reader.schema.equals(schema) or len(batches) != 1 or batches[0].num_rows != 1:
        raise RecordError(f"reply must be one row of the hidden-state schema, got {reader.schema} x {len(batches)}")
    batch = pa.record_batch(batches[0].columns, schema=schema)
    return StreamedRecord(batch, meta[META_CODEC], json.loads(meta[META_LAYER_IDS]), int(meta[META_HIDDEN_SIZE]), k)


def check_matches(record: StreamedRecord, sample_id: str, input_ids: np.ndarray, loss_mask: np.ndarray) -> None:
    """The reply must be the sample that was asked for (ids, token ids and mask), or RecordError."""
    if record.sample_id != sample_id:
        raise RecordError(f"asked for sample {sample_id!r}, the server answered {record.sample_id!r}")
    got_ids = record.batch.column("input_ids")[0].values.to_numpy()
    got_mask = record.batch.column("loss_mask")[0].values.to_numpy(zero_copy_only=False)
    if not (np.array_equal(got_ids, input_ids) and np.array_equal(got_mask.astype(bool), loss_mask.astype(bool))):
        raise RecordError(f"sample {sample_id!r}: the reply's token ids or loss mask differ from the request")
