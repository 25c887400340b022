"""Project the size of a hidden-state dataset before capturing it (`dspark dump-hidden --dry-run`).

Why: storage is the field's main pain (10-40 TB per dataset); a user should see the bill, per codec,
before a capture starts. The ratios below are the measured typical ratios of each codec against raw
bf16 (see `bench/storage.py` and docs/formats/store.md); real ratios vary a few percent by model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from dspark_data.store.codecs import get_codec
from dspark_data.store.topk import raw_bytes_per_token as topk_raw_bytes_per_token
from schemas.recipe import CaptureConfig

# measured on heavy-tailed synthetic activations and on the tiny targets (zstd level 1); the group codecs'
# figures are the tiny target's (docs/formats/store.md). Prediction across layers pays by how correlated
# the stored layers are (tiny: 1.2x more; independent layers: less), so a `-delta` codec's default is its
# plain codec's ratio; `dspark codecs` and `dump-hidden --dry-run --sample-from` measure the real one.
TYPICAL_RATIO: dict[str, float] = {
    "raw": 1.0, "zstd-split": 1.44, "fp8": 2.3, "int6-g32": 2.6, "int5-g32": 3.1, "int4-g32": 4.0,
    "int4-g64": 4.25, "int3-g32": 5.6, "int6-g32-delta": 2.6, "int5-g32-delta": 3.1, "int4-g32-delta": 4.0,
}
# per-sample bytes besides the payload: Arrow batch framing, token ids (int64), mask, index row
PER_SAMPLE_OVERHEAD = 700
PER_TOKEN_OVERHEAD = 9
# the top-K column (uint32 ids + fp16 log-probs + fp32 tail) after zstd: the ids' high bytes compress, the
# rest hardly. Measured 1.46-1.47x with ids spread over a 154,880 vocab (GLM-5's size), 1.7-1.8x on the
# tiny target's 2,048 (bench/topk.py; docs/topk-targets.md)
TOPK_TYPICAL_RATIO = 1.45


@dataclass(frozen=True)
class SizeProjection:
    codec: str
    tokens: int
    samples: int
    raw_bytes: int  # bf16 hidden states (tokens * n_layers * hidden_size * 2) plus the raw top-K column
    bytes: int  # projected bytes on disk
    ratio: float  # raw_bytes / bytes
    bytes_per_token: float
    shards: int
    files: int  # shards + their index files + manifest.json + errors.jsonl

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def project_size(
    hidden_size: int,
    n_layers: int,
    tokens: int,
    codec: str,
    *,
    samples: int = 0,
    shard_bytes: int = CaptureConfig.model_fields["shard_bytes"].default,
    measured_ratio: float | None = None,
    topk_logprobs: int = 0,
) -> SizeProjection:
    """Bytes and file count of a dataset of `tokens` tokens (`samples` conversations) with `codec`, plus
    the top-K column when `topk_logprobs` > 0. `measured_ratio`: raw bytes (bf16 states + raw top-K) over
    *all* stored bytes of a capture of the same target with this codec (its manifest totals), used instead
    of the typical ratios plus the fixed overheads."""
    get_codec(codec)
    hidden = tokens * n_layers * hidden_size * 2
    topk = tokens * topk_raw_bytes_per_token(topk_logprobs)
    raw = hidden + topk
    if measured_ratio is not None:
        stored = int(raw / measured_ratio)
    else:
        stored = int(hidden / TYPICAL_RATIO[codec]) + int(topk / TOPK_TYPICAL_RATIO)
        stored += samples * PER_SAMPLE_OVERHEAD + tokens * PER_TOKEN_OVERHEAD
    shards = max(1, math.ceil(stored / shard_bytes)) if tokens else 0
    return SizeProjection(
        codec=codec,
        tokens=tokens,
        samples=samples,
        raw_bytes=raw,
        bytes=stored,
        ratio=round(raw / stored, 3) if stored else 1.0,
        bytes_per_token=round(stored / tokens, 1) if tokens else 0.0,
        shards=shards,
        files=2 * shards + 2,
    )
