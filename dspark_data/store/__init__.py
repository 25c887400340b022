"""The shard store: dspark's on-disk dataset format, shared by regen and hidden-state datasets.

A dataset directory holds `manifest.json` (the commit point; `schemas.store.Manifest`), Arrow IPC
shards `shard-NNNNN.arrow` with per-sample index files `shard-NNNNN.index.arrow`, and `errors.jsonl`.
See `docs/formats/store.md`.

Public API (details in each module's docstring):
    ShardWriter(directory, kind, arrow_schema, fingerprint, *, producer_config=None, shard_bytes=None,
                shard_rows=None, batch_rows=1, length_column="input_ids", ipc_compression=None,
                codec=None, layer_ids=None, hidden_size=None, overwrite=False)
        .committed_ids, .error_ids, .complete, .manifest, .write(row, *, raw_bytes=None),
        .write_batch(batch, *, raw_bytes=None), .record_error(sample_id, reason, detail=""),
        .commit(), .close() -> Manifest, .abort(); a context manager (close on success, abort on error)
    open_dataset(directory, *, require_complete=False) -> ShardDataset
        .manifest, len(), .ids, .lengths, .index_of(id), .row(i) -> dict, .record(i) -> (RecordBatch, row),
        .iter_columns(columns) -> Iterator[pa.Table] (one per shard)
    verify(directory) -> VerifyReport(ok, complete, issues[Issue(file, message, shard, sample_ids, rows)], ...)
    inspect(directory) -> dict
    encode(name, tensor, *, level=1, threads=None) -> bytes;  decode(name, payload, shape, *, threads=1) -> Tensor
    HiddenStateWriter(directory, *, layer_ids, hidden_size, codec, target, seq_len, target_revision=None,
                      regen_fingerprint=None, zstd_level=1, extra_fingerprint=None, producer_config=None,
                      shard_bytes=1<<30, overwrite=False, threads=None,   # threads: samples encoded side by side
                      topk_logprobs=0)   # K > 0: each row also stores the target's top-K (`topk.py`)
        .write(sample_id, input_ids, loss_mask, hidden, topk=None) (queued; appended in call order), .record_error,
        .commit, .close, .abort  (commit/close wait for the samples still encoding)
    open_hidden(directory, *, require_complete=False, threads=1) -> HiddenDataset
        .manifest, .ids, .lengths, .layer_ids, .hidden_size, .codec, .topk_logprobs, ds[i] -> HiddenSample
        (.topk: TopK or None), .tokens(i)
    project_size(hidden_size, n_layers, tokens, codec, *, samples=0, shard_bytes=1<<30, topk_logprobs=0)

This package imports only `schemas` (never dspark_train, regen or vLLM).
"""

from dspark_data.store.check import Issue, VerifyReport, inspect, verify
from dspark_data.store.codecs import CODECS, decode, encode
from dspark_data.store.hidden import HiddenDataset, HiddenSample, HiddenStateWriter, open_hidden
from dspark_data.store.manifest import FingerprintMismatch, StoreError, load_manifest
from dspark_data.store.reader import ShardDataset, open_dataset
from dspark_data.store.sizing import SizeProjection, project_size
from dspark_data.store.writer import ShardWriter

__all__ = [
    "CODECS",
    "HiddenDataset",
    "HiddenSample",
    "HiddenStateWriter",
    "SizeProjection",
    "decode",
    "encode",
    "open_hidden",
    "project_size",
    "FingerprintMismatch",
    "Issue",
    "VerifyReport",
    "inspect",
    "verify",
    "ShardDataset",
    "ShardWriter",
    "StoreError",
    "load_manifest",
    "open_dataset",
]
