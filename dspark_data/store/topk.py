"""The target's top-K next-token distribution per position: the in-memory form and its stored payload.

Why: on CUDA, GLM-5.x under vLLM never returns layer id N (facts 3b), so the loss targets cannot be
recomputed from the last hidden state; vLLM's `prompt_logprobs=K` gives the target's own top-K instead.
Row t holds the distribution of token t+1 given tokens <= t (the trainer's `next_probs[t]`); the last row
(no next token) is empty: ids 0, log-probs -inf, tail 1.

Stored per token (docs/formats/hidden-states.md, "Top-K payload"):
- `ids` uint32 [T, K], sorted by descending log-prob (rank 1 first), zstd-compressed (target vocabs
  exceed 65,536, so 16 bits do not fit);
- `logprobs` float16 [T, K]: fp16 keeps ~11 significant bits over the whole range a log-prob takes (bf16
  keeps 8: a 0.4% relative error on each probability), measured in bench/topk.py;
- `tail` float32 [T]: 1 - sum_k exp(logprob_k), computed in float64 from the engine's float32 values
  *before* the fp16 rounding, so the mass outside the top-K is not disturbed by it (the loss bounds
  rest on it).

Payload (little-endian): header `<4sBBHII` = magic b"DSTK", version, 0, 0, T, K; then per chunk (ids,
logprobs, tail) a u32 stored length and a u8 mode (0 raw, 1 zstd); then the chunks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import torch

from dspark_data.store.payload import unzstd, zstd_chunk

MAGIC = b"DSTK"
VERSION = 1
_HEADER = struct.Struct("<4sBBHII")
_CHUNK = struct.Struct("<IB")


@dataclass(frozen=True)
class TopK:
    """One sample's stored target distribution: ids int64 [T, K], logprobs float16 [T, K], tail float32 [T]."""

    ids: torch.Tensor
    logprobs: torch.Tensor
    tail: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    def truncate(self, k: int) -> TopK:
        """The top-`k` of this top-K (k <= K): the dropped entries' mass joins the tail."""
        if k > self.k:
            raise ValueError(f"cannot take the top-{k} of a top-{self.k}")
        if k == self.k:
            return self
        dropped = self.logprobs[:, k:].float().exp().sum(dim=1)
        return TopK(self.ids[:, :k], self.logprobs[:, :k], (self.tail + dropped).clamp(0.0, 1.0))

    def probs(self) -> torch.Tensor:
        """float32 [T, K] probabilities."""
        return self.logprobs.float().exp()


def from_logprobs(ids: torch.Tensor | np.ndarray, logprobs: torch.Tensor | np.ndarray) -> TopK:
    """Build the stored form from an engine's float32 top-K ([T, K] ids and log-probs, any order per row).

    Rows are sorted by descending log-prob, ties by ascending id, so two engines that agree on the values
    store the same bytes. The tail is computed from the float32 values, before rounding to fp16.
    """
    ids_np = np.asarray(ids, dtype=np.int64)
    lp = np.asarray(logprobs, dtype=np.float32)
    if ids_np.shape != lp.shape or ids_np.ndim != 2:
        raise ValueError(f"top-K ids {ids_np.shape} and logprobs {lp.shape} must both be [T, K]")
    order = np.lexsort((ids_np, -lp), axis=1) if lp.size else np.zeros(lp.shape, dtype=np.int64)
    ids_np = np.take_along_axis(ids_np, order, axis=1)
    lp = np.take_along_axis(lp, order, axis=1)
    tail = np.clip(1.0 - np.exp(lp.astype(np.float64)).sum(axis=1), 0.0, 1.0).astype(np.float32)
    return TopK(torch.from_numpy(ids_np), torch.from_numpy(lp.astype(np.float16)), torch.from_numpy(tail))


def with_empty_last_row(ids: np.ndarray, logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Append the empty last row (no next token): ids 0, log-probs -inf (so its tail is 1)."""
    k = ids.shape[1]
    return (np.concatenate([ids, np.zeros((1, k), dtype=ids.dtype)]),
            np.concatenate([logprobs, np.full((1, k), -np.inf, dtype=logprobs.dtype)]))


def encode(topk: TopK, *, level: int = 1) -> bytes:
    """TopK -> payload bytes."""
    t, k = topk.ids.shape
    ids = topk.ids.detach().cpu().numpy()
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 32):
        raise ValueError(f"top-K token ids must be in [0, 2**32), got [{ids.min()}, {ids.max()}]")
    lp = topk.logprobs.detach().cpu().to(torch.float16).numpy()
    tail = topk.tail.detach().cpu().to(torch.float32).numpy()
    if tail.shape != (t,) or lp.shape != (t, k):
        raise ValueError(f"top-K shapes ids {ids.shape}, logprobs {lp.shape}, tail {tail.shape} disagree")
    chunks = [
        zstd_chunk(ids.astype("<u4"), level),
        zstd_chunk(lp.astype("<f2"), level),
        (memoryview(np.ascontiguousarray(tail.astype("<f4")).view(np.uint8)), 0),
    ]
    header = _HEADER.pack(MAGIC, VERSION, 0, 0, t, k)
    table = b"".join(_CHUNK.pack(len(c), mode) for c, mode in chunks)
    return b"".join([header, table, *(c for c, _ in chunks)])


def decode(payload: bytes | memoryview, tokens: int, k: int) -> TopK:
    """Payload bytes -> TopK; ValueError when the payload is damaged or not [tokens, k]."""
    mv = memoryview(payload).cast("B")
    if mv.nbytes < _HEADER.size + 3 * _CHUNK.size:
        raise ValueError(f"top-K payload too short ({mv.nbytes} B)")
    magic, version, _, _, t, kk = _HEADER.unpack_from(mv, 0)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"not a dspark top-K payload (magic {magic!r}, version {version})")
    if (t, kk) != (tokens, k):
        raise ValueError(f"top-K payload shape {(t, kk)} differs from the expected {(tokens, k)}")
    pos = _HEADER.size + 3 * _CHUNK.size
    sizes = [t * k * 4, t * k * 2, t * 4]
    parts = []
    for i, size in enumerate(sizes):
        length, mode = _CHUNK.unpack_from(mv, _HEADER.size + _CHUNK.size * i)
        data = unzstd(mv[pos : pos + length], mode, size)
        if len(data) != size:
            raise ValueError(f"top-K payload chunk {i} holds {len(data)} B, expected {size}")
        parts.append(data)
        pos += length
    if pos != mv.nbytes:
        raise ValueError(f"top-K payload is {mv.nbytes} B, its header describes {pos} B")
    ids = np.frombuffer(parts[0], dtype="<u4").reshape(t, k).astype(np.int64)
    lp = np.frombuffer(parts[1], dtype="<f2").reshape(t, k).copy()
    tail = np.frombuffer(parts[2], dtype="<f4").copy()
    return TopK(torch.from_numpy(ids), torch.from_numpy(lp), torch.from_numpy(tail))


def raw_bytes_per_token(k: int) -> int:
    """Uncompressed stored bytes per token of a top-K: uint32 ids + fp16 log-probs + fp32 tail."""
    return 6 * k + 4 if k else 0
