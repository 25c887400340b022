"""On-disk contract of the shard store: the manifest of a sharded Arrow dataset (regen or hidden states).

The manifest (`manifest.json`) is the commit point of a dataset directory: a shard exists for readers
only once the manifest names it, with the sha256 of its bytes. Everything a reader needs to trust a
directory is here: which producer settings made it (fingerprint), which files hold which samples,
and the checksums to verify them. The per-sample index (id -> batch, byte range, checksum) lives in
one small Arrow file per shard (`INDEX_ARROW_SCHEMA`), named by its shard entry, so the manifest stays
small and is rewritten in O(shards) at each commit. The row layout of hidden-state datasets
(`HIDDEN_ARROW_SCHEMA`) is here too: the store writes it, the trainer reads it, and the streaming wire
sends it unchanged. See `docs/formats/store.md` and `docs/formats/hidden-states.md`.
"""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator

from schemas.base import StrictModel

STORE_SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
ERRORS_NAME = "errors.jsonl"

# `shard-NNNNN.index.arrow`: one row per sample of the shard, in row order.
INDEX_ARROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("batch", pa.int32()),  # record batch number inside the shard
        ("row", pa.int32()),  # row inside that batch
        ("offset", pa.int64()),  # byte range of the batch in the shard file (batch 0 includes the header)
        ("length", pa.int64()),
        ("tokens", pa.int64()),
        ("sha256", pa.binary(32)),  # sha256 of that byte range: the per-sample checksum
    ]
)

# Rows of a hidden-state dataset (kind "hidden"): `hidden` is the [T, L, H] bf16 states encoded by the
# manifest's codec; L, H, the layer ids and the codec live in the manifest, not in each row.
HIDDEN_ARROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("input_ids", pa.list_(pa.int64())),
        ("loss_mask", pa.list_(pa.bool_())),
        ("hidden", pa.large_binary()),
    ]
)
TOPK_COLUMN = "topk"  # the top-K target log-probs payload (dspark_data/store/topk.py), when manifest.topk_logprobs
HIDDEN_TOPK_ARROW_SCHEMA = HIDDEN_ARROW_SCHEMA.append(pa.field(TOPK_COLUMN, pa.large_binary()))


def check_plain_name(name: str) -> str:
    """Refuse anything but a plain file name: manifests must never point outside their directory."""
    bad = (
        not name
        or name in {".", ".."}
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or name.startswith("~")
        or (len(name) >= 2 and name[1] == ":")
    )
    if bad:
        raise ValueError(f"file names in a manifest must be plain names inside the dataset directory, got {name!r}")
    return name


class ShardEntry(StrictModel):
    """One committed shard and its per-sample index file."""

    file: str = Field(description="Shard file name (Arrow IPC file format), e.g. shard-00000.arrow.")
    sha256: str = Field(description="sha256 hex of the shard file's bytes.")
    bytes: int = Field(ge=0, description="Size of the shard file in bytes.")
    index_file: str = Field(description="Per-sample index file name (Arrow IPC), e.g. shard-00000.index.arrow.")
    index_sha256: str = Field(description="sha256 hex of the index file's bytes.")
    index_bytes: int = Field(ge=0, description="Size of the index file in bytes.")
    samples: int = Field(ge=0, description="Samples (rows) in the shard.")
    batches: int = Field(ge=0, description="Arrow record batches in the shard.")
    tokens: int = Field(ge=0, description="Tokens in the shard (sum of the length column; 0 without one).")
    raw_bytes: int = Field(ge=0, description="Uncompressed payload bytes the shard represents.")
    first_row: int = Field(ge=0, description="Global row number of the shard's first sample.")
    last_row: int = Field(ge=-1, description="Global row number of the shard's last sample (first_row-1 if empty).")
    first_id: str | None = Field(None, description="Sample id of the first row.")
    last_id: str | None = Field(None, description="Sample id of the last row.")

    @field_validator("file", "index_file")
    @classmethod
    def _plain(cls, v: str) -> str:
        return check_plain_name(v)


class Totals(StrictModel):
    """Dataset totals over committed shards."""

    samples: int = Field(0, ge=0, description="Committed samples.")
    tokens: int = Field(0, ge=0, description="Committed tokens.")
    raw_bytes: int = Field(0, ge=0, description="Uncompressed payload bytes (bf16 hidden states, or Arrow buffers).")
    stored_bytes: int = Field(0, ge=0, description="Bytes on disk: shards plus index files.")
    errors: int = Field(0, ge=0, description="Committed error records.")


class Manifest(StrictModel):
    """The commit point of a dataset directory. Written atomically (temp file, fsync, rename)."""

    schema_version: int = Field(STORE_SCHEMA_VERSION, description="Version of this manifest format.")
    kind: str = Field(description="Dataset kind, e.g. 'regen' or 'hidden'.")
    fingerprint: dict[str, Any] = Field(description="Producer inputs and settings that determine the content.")
    fingerprint_hash: str = Field(description="schemas.fingerprint(fingerprint): compared on resume.")
    producer_config: dict[str, Any] = Field(
        default_factory=dict, description="Full producer settings (informational; not compared on resume)."
    )
    columns: dict[str, str] = Field(description="Arrow schema of the shards: column name -> Arrow type string.")
    length_column: str | None = Field(None, description="Column whose list length counts as the sample's tokens.")
    batch_rows: int = Field(1, ge=1, description="Rows per Arrow record batch (1: one batch per sample).")
    codec: str | None = Field(None, description="Payload codec (hidden states), or None.")
    layer_ids: list[int] | None = Field(None, description="Hidden-state layer ids in stored order (hidden only).")
    hidden_size: int | None = Field(None, description="Hidden size H (hidden only).")
    topk_logprobs: int | None = Field(
        None, ge=1, description="K of the stored top-K target log-probs (column `topk`; hidden only), None: none."
    )
    shards: list[ShardEntry] = Field(default_factory=list, description="Committed shards in order.")
    totals: Totals = Field(default_factory=Totals)
    errors_file: str = Field(ERRORS_NAME, description="JSON-lines file of per-sample errors.")
    errors_bytes: int = Field(0, ge=0, description="Committed length of the errors file; the rest is discarded.")
    error_counts: dict[str, int] = Field(default_factory=dict, description="Committed errors counted by reason.")
    complete: bool = Field(False, description="True once the producer closed the dataset normally.")
    created_at: str = Field(description="UTC time the dataset was started (ISO 8601).")
    updated_at: str = Field(description="UTC time of the last commit (ISO 8601).")

    @field_validator("errors_file")
    @classmethod
    def _plain(cls, v: str) -> str:
        return check_plain_name(v)


class ErrorRecord(StrictModel):
    """One line of errors.jsonl: a sample the producer could not store, and why."""

    id: str = Field(description="Sample id.")
    reason: str = Field(description="Short machine-readable reason, e.g. 'too_long'; counted in the manifest.")
    detail: str = Field("", description="Human-readable detail.")


VOCAB_SCHEMA_VERSION = 1


class VocabManifest(StrictModel):
    """`vocab.json` beside `vocab.safetensors` (d2t int64 [N], t2d bool [V], counts int64 [V]).

    Written last, so it is the commit point of the vocab stage; a rerun with the same fingerprint reuses it.
    """

    schema_version: int = Field(VOCAB_SCHEMA_VERSION, description="Version of the vocab format.")
    fingerprint: dict[str, Any] = Field(description="Data identity and settings the vocab was built from.")
    fingerprint_hash: str = Field(description="schemas.fingerprint(fingerprint).")
    data_dir: str = Field(description="Dataset directory the counts were read from (informational).")
    data_kind: Literal["regen", "hidden"] = Field(description="Kind of that dataset.")
    draft_vocab_size: int = Field(ge=1, description="N: entries of d2t (min of the requested size and V).")
    target_vocab_size: int = Field(ge=1, description="V: entries of t2d and counts.")
    samples: int = Field(ge=0, description="Samples counted.")
    tokens: int = Field(ge=0, description="Loss-masked tokens counted.")
    coverage: float = Field(ge=0, le=1, description="Fraction of loss-masked tokens whose id is in the draft vocab.")
    sha256: str = Field(description="sha256 of vocab.safetensors.")
    created_at: str = Field(description="UTC time (ISO 8601).")
