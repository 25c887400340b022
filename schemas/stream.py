"""Wire contract of live streaming (`dspark serve-target` <-> `dspark train --stream`), and the cache marker.

The trainer sends one conversation per request (`StreamRequest`, JSON); the gateway answers with the
sample as an Arrow IPC *stream* holding exactly one row in the hidden-state store's record layout
(`dspark_data.store.hidden_schema`: id, input_ids, loss_mask, hidden = codec payload, and `topk` when
the capture stores top-K log-probs), so a streamed
sample is byte for byte what `dump-hidden` stores and can be appended to a store dataset unchanged.
`StreamInfo` (`GET /v1/info`) tells the trainer what the server captures, so both sides check they agree
before any sample moves. Errors come back as `StreamErrorBody` JSON with an HTTP status saying whether a
retry can help (429/5xx) or not (4xx). See docs/streaming.md.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from schemas.base import StrictModel

STREAM_SCHEMA_VERSION = 1
STREAM_FORMAT = "dspark-stream-1"
ARROW_STREAM_MEDIA_TYPE = "application/vnd.apache.arrow.stream"
CACHE_FORMAT = "dspark-stream-cache-1"
CACHE_INFO_NAME = "cache.json"

# Schema metadata keys on a streamed record (the store keeps these in its manifest instead).
META_FORMAT = "dspark.format"
META_CODEC = "dspark.codec"
META_LAYER_IDS = "dspark.layer_ids"
META_HIDDEN_SIZE = "dspark.hidden_size"
META_TOPK = "dspark.topk_logprobs"


class StreamRequest(StrictModel):
    """`POST /v1/hidden`: one conversation whose hidden states the trainer wants."""

    schema_version: int = Field(STREAM_SCHEMA_VERSION, description="Version of this request format.")
    id: str = Field(min_length=1, description="Sample id (the regen record's id); echoed in the reply.")
    input_ids: list[int] = Field(min_length=1, description="Exact token ids of the conversation.")
    loss_mask: list[bool] = Field(description="True on tokens the target generated; stored, not used by the server.")

    @model_validator(mode="after")
    def _same_length(self) -> StreamRequest:
        if len(self.input_ids) != len(self.loss_mask):
            raise ValueError(f"input_ids ({len(self.input_ids)}) and loss_mask ({len(self.loss_mask)}) differ")
        return self


class StreamInfo(StrictModel):
    """`GET /v1/info`: what a gateway serves; the trainer refuses a server whose capture differs from its recipe."""

    schema_version: int = Field(STREAM_SCHEMA_VERSION, description="Version of this info format.")
    format: str = Field(STREAM_FORMAT, description="Wire format of the sample replies.")
    server_id: str = Field(description="Random id of this server start: a new value means the server restarted.")
    recipe: str = Field(description="Name of the recipe the server was started with.")
    target: str = Field(description="Target spec as the recipe gives it (hub id, directory or tiny:*).")
    target_revision: str | None = Field(None, description="Target hub revision, if any.")
    seq_len: int = Field(ge=1, description="The recipe's seq_len (part of the store fingerprint).")
    max_tokens: int = Field(ge=1, description="Longest conversation (tokens) the server accepts.")
    vocab_size: int = Field(ge=1, description="Target vocabulary size; larger token ids are refused.")
    layer_ids: list[int] = Field(description="Stored layer ids in order (aux layers, then N when stored).")
    hidden_size: int = Field(ge=1, description="Target hidden size H.")
    codec: str = Field(description="Hidden-state codec of the replies (the recipe's capture.codec).")
    topk_logprobs: int = Field(0, ge=0, description="K of the top-K target log-probs each reply carries (0: none).")
    zstd_level: int = Field(ge=1, description="zstd level the codec uses.")
    max_inflight: int = Field(ge=1, description="Requests the gateway runs at once; more wait in its queue.")
    max_queue: int = Field(ge=0, description="Requests allowed to wait; beyond that the gateway answers 429.")

    def capture_fields(self) -> dict[str, Any]:
        """The fields that must agree between server and trainer (they decide what a sample contains)."""
        return {k: getattr(self, k) for k in ("target", "target_revision", "seq_len", "layer_ids", "hidden_size",
                                              "codec", "zstd_level", "topk_logprobs")}


class StreamErrorBody(StrictModel):
    """JSON body of every non-200 reply."""

    error: str = Field(description="Machine-readable reason, e.g. 'unauthorized', 'token_mismatch', 'busy'.")
    detail: str = Field("", description="Human-readable detail.")
    retry: bool = Field(False, description="True when the same request may succeed later (server busy or restarting).")


class CacheInfo(StrictModel):
    """`<cache-dir>/cache.json`: marks a stream cache (one store dataset per rank under `rank-NNNNN/`)."""

    schema_version: int = Field(STREAM_SCHEMA_VERSION, description="Version of this marker format.")
    format: str = Field(CACHE_FORMAT, description="Cache layout version.")
    fingerprint_hash: str = Field(description="Store fingerprint every part shares (schemas.fingerprint).")
    fingerprint: dict[str, Any] = Field(description="The store fingerprint itself (target, layers, codec...).")
    created_at: str = Field(description="UTC time the cache was started (ISO 8601).")
